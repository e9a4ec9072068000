"""What every stage shares: its I/O context, cancellation checks, and the result artifact.

A stage is a frozen config dataclass plus ``run(cfg, inputs) -> Result``. ``inputs.io`` carries the output
directory, a progress callback (the service turns it into job events) and a ``should_stop`` poll (a cancel
request); long loops call ``io.step(fraction, message, **metrics)`` at each step boundary, which raises
``JobCancelled`` when a cancel was requested. A stage writes ``result.json`` last (atomically), so
``result_exists(out_dir)`` means the stage finished and may be skipped on redelivery.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

from tunegate.artifacts import atomic_write_json, read_json, save_config

RESULT_NAME = "result.json"


class StageResult:
    """Base of every stage's result dataclass: ``to_dict()`` is what ``result.json`` holds."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(cast(Any, self))


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
