"""What every stage shares: its I/O context, cancellation checks, and the result artifact.

A stage is a frozen config dataclass plus ``run(cfg, inputs) -> Result``. ``inputs.io`` carries the output
directory, a progress callback (the service turns it into job events) and a ``should_stop`` poll (a cancel
request); long loops call ``io.step(fraction, message, **metrics)`` at each step boundary, which raises
``JobCancelled`` when a cancel was requested. A stage writes ``result.json`` last (atomically), so
``result_exists(out_dir)`` means the stage finished and may be skipped on redelivery.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from tunegate.artifacts import atomic_write_json, read_json, save_config
from tunegate.errors import JobCancelled, StageTimeLimit

RESULT_NAME = "result.json"
ProgressFn = Callable[[float, str, dict[str, Any]], None]


class StageResult:
    """Base of every stage's result dataclass: ``to_dict()`` is what ``result.json`` holds."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))


def _no_progress(fraction: float, message: str, metrics: dict[str, Any]) -> None:
    del fraction, message, metrics


def _never() -> bool:
    return False


@dataclass
class StageIO:
    out_dir: Path
    progress: ProgressFn = _no_progress
    should_stop: Callable[[], bool] = _never
    stage: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    deadline: float = math.inf  # time.monotonic() past which the stage stops at its next step

    def step(self, fraction: float, message: str = "", **metrics: Any) -> None:
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


def result_exists(out_dir: Path) -> bool:
    return (Path(out_dir) / RESULT_NAME).is_file()


def load_result(out_dir: Path) -> dict[str, Any]:
    data = read_json(Path(out_dir) / RESULT_NAME)
    assert isinstance(data, dict)
    return data


def finish(out_dir: Path, cfg: Any, result: dict[str, Any]) -> dict[str, Any]:
    """Save the config beside the artifacts, then the result (last, atomically)."""
    save_config(cfg, out_dir)
    atomic_write_json(Path(out_dir) / RESULT_NAME, result)
    return result
