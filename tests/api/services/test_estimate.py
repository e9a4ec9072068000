"""The estimator of ``estimated_finish`` (a pure function of the running stage's progress points)."""

from __future__ import annotations

import pytest

from api.services.estimate import estimate_finish


def test_the_rest_goes_at_the_measured_rate() -> None:
    # 0.2 -> 0.4 in 100 s: 0.002/s; 0.6 left: 300 s after the last point
    assert estimate_finish([(1000.0, 0.2), (1100.0, 0.4)], now=1100.0) == 1400


def test_points_in_any_order_and_the_window_ends_are_used() -> None:
    points = [(1100.0, 0.4), (1000.0, 0.2), (1050.0, 0.25)]
    assert estimate_finish(points, now=0.0) == 1400


@pytest.mark.parametrize(
    "points",
    [
        [],
        [(1000.0, 0.2)],
        [(1000.0, 0.2), (1100.0, 0.2)],  # no progress yet
        [(1000.0, 0.2), (1000.0, 0.4)],  # no time between them
    ],
)
def test_no_estimate_without_two_points_that_show_progress(points: list[tuple[float, float]]) -> None:
    assert estimate_finish(points, now=1000.0) is None


def test_never_in_the_past() -> None:
    assert estimate_finish([(1000.0, 0.2), (1100.0, 0.4)], now=5000.0) == 5000


def test_a_finished_stage_at_full_progress_finishes_at_its_last_point() -> None:
    assert estimate_finish([(1000.0, 0.5), (1100.0, 1.0)], now=0.0) == 1100
