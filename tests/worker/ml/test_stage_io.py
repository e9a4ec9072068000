"""StageIO's stopping points: a cancel at any step, a pause only at a checkpoint (and a cancel wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunegate.errors import JobCancelled, JobPaused
from worker.ml.stage_io import StageIO


def _io(tmp_path: Path, *, pause: bool, cancel: bool) -> StageIO:
    return StageIO(tmp_path, stage="train", should_pause=lambda: pause, should_stop=lambda: cancel)


def test_a_pause_request_stops_at_a_checkpoint_not_at_a_step(tmp_path: Path) -> None:
    io = _io(tmp_path, pause=True, cancel=False)
    io.step(0.5, "step 2/4")  # a step is no place to pause
    with pytest.raises(JobPaused, match="paused during train: after epoch 1/2"):
        io.checkpoint_reached("after epoch 1/2")


def test_without_a_request_a_checkpoint_goes_on(tmp_path: Path) -> None:
    _io(tmp_path, pause=False, cancel=False).checkpoint_reached("after epoch 1/2")


def test_a_cancel_requested_too_wins_over_the_pause(tmp_path: Path) -> None:
    io = _io(tmp_path, pause=True, cancel=True)
    io.checkpoint_reached("after epoch 1/2")  # no pause: the next step cancels
    with pytest.raises(JobCancelled):
        io.step(0.75, "step 3/4")
