from benchmarks.panel.stats import auroc, reproduced, wilson95


def test_auroc_counts_wins_and_half_ties() -> None:
    assert auroc([3, 4], [1, 2]) == 1.0
    assert auroc([1], [2]) == 0.0
    assert auroc([1, 2], [1, 2]) == 0.5
    assert auroc([], [1]) is None


def test_wilson95_is_two_sided() -> None:
    lo, hi = wilson95(5, 10)
    assert 0.23 < lo < 0.24 and 0.76 < hi < 0.77
    assert wilson95(0, 0) == (0.0, 1.0)


def test_reproduced_needs_twice_the_reference_floored_at_one_prompt() -> None:
    assert reproduced(0.2, 0.1, 100)
    assert not reproduced(0.15, 0.1, 100)
    assert not reproduced(0.01, 0.0, 100)  # one flipped prompt against a zero reference
    assert reproduced(0.02, 0.0, 100)
