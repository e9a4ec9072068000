"""A stage's I/O context: its output directory, progress reports, and where it must stop.

Long loops (training steps, generation batches, scoring) call ``io.step(fraction, message, **metrics)`` at
each step boundary; that reports progress (the service turns it into job events) and raises ``JobCancelled``
when a cancel was requested or ``StageTimeLimit`` past the stage's deadline. A stage that saves checkpoints
calls ``io.checkpoint_reached(message)`` after each one: that raises ``JobPaused`` when a pause was
requested, so the job pauses where it can resume. It lives at the bottom of
``worker/`` so that the ML packages (training, evaluation, scoring) can take it without importing a stage.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

from tunegate.errors import JobCancelled, JobPaused, StageTimeLimit

# one progress report's metrics (a loss, a step number, a verdict ...), shown in the job's event
Metric = float | str
ProgressFn = Callable[[float, str, dict[str, Metric]], None]


class CheckpointInfo(TypedDict):
    """A saved checkpoint, as the train stage tells ``StageIO.on_checkpoint`` of it (the service records it as
    a ``Checkpoint`` row and an event)."""

    step_number: int
    epoch: int
    metrics: dict[str, float]  # the last step's (``worker.training.checkpoint.Checkpoint.metrics``)
    path: str  # its directory (once published, where the API reads it)


def _no_progress(fraction: float, message: str, metrics: dict[str, Metric]) -> None:
    del fraction, message, metrics


def _never() -> bool:
    return False


@dataclass
class StageIO:
    out_dir: Path
    progress: ProgressFn = _no_progress
    should_stop: Callable[[], bool] = _never
    stage: str = ""
    deadline: float = math.inf  # time.monotonic() past which the stage stops at its next step
    # told of every saved checkpoint (the service records it as a row and an event); idempotent
    on_checkpoint: Callable[[CheckpointInfo], None] | None = None
    should_pause: Callable[[], bool] = _never  # asked at each checkpoint the stage can resume from

    def checkpoint_reached(self, message: str) -> None:
        """A resumable point (a checkpoint was saved): pause here if a pause was requested (a cancel
        requested too wins: the job ends ``cancelled`` instead)."""
        if self.should_pause() and not self.should_stop():
            raise JobPaused(f"paused during {self.stage or 'stage'}: {message}")

    def step(self, fraction: float, message: str = "", **metrics: Metric) -> None:
        """Report progress (0..1 within this stage); stop here if a cancel was requested or the stage ran
        past its deadline."""
        if time.monotonic() > self.deadline:
            raise StageTimeLimit(
                f"The {self.stage or 'stage'} stage ran past its time limit on this service; "
                "the job was stopped."
            )
        if self.should_stop():
            where = f"cancelled during {self.stage or 'stage'} at {fraction:.0%}: {message}"
            raise JobCancelled(where.rstrip(": "))
        self.progress(max(0.0, min(1.0, fraction)), message, metrics)
