"""Agreement of two judges: counts, percent, Cohen's kappa (hand-computed)."""

import pytest

from worker.evaluation.agreement import agreement


def test_counts_percent_and_kappa_by_hand() -> None:
    # 10 replies: both 3, first only 1, second only 2, neither 4
    first = [True] * 3 + [True] + [False] * 2 + [False] * 4
    second = [True] * 3 + [False] + [True] * 2 + [False] * 4
    a = agreement(first, second)
    assert (a.both, a.first_only, a.second_only, a.neither, a.n) == (3, 1, 2, 4, 10)
    assert a.percent == pytest.approx(0.7)
    # p_o = 0.7; first says yes 0.4, second 0.5: p_e = 0.4*0.5 + 0.6*0.5 = 0.5; kappa = 0.2/0.5
    assert a.kappa == pytest.approx(0.4)


def test_perfect_opposite_and_degenerate() -> None:
    assert agreement([True, False], [True, False]).kappa == pytest.approx(1.0)
    assert agreement([True, False], [False, True]).kappa == pytest.approx(-1.0)
    same = agreement([False] * 5, [False] * 5)
    assert same.kappa == 1.0 and same.percent == 1.0
    assert agreement([], []).n == 0
    with pytest.raises(ValueError, match="same responses"):
        agreement([True], [])
