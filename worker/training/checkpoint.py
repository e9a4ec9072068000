"""Per-epoch checkpoints: the adapter (peft format) plus optimizer and RNG state, published atomically.

``checkpoints/epoch-N/`` holds ``adapter/`` (loadable on its own with ``PeftModel.from_pretrained``) and
``trainer_state.pt``. A directory only gets its final name once both are written, so the latest
``epoch-N`` is always complete and a crashed run resumes from it.
"""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NotRequired, TypedDict

from tunegate.artifacts import atomic_write_json, publish_dir

if TYPE_CHECKING:
    from torch import Tensor

STATE_FILE = "trainer_state.pt"
_NAME = re.compile(r"^epoch-(\d+)$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    epoch: int  # epochs completed
    step: int  # optimizer steps completed
    metrics: dict[str, float]
    history: list[dict[str, float]] = field(default_factory=list)  # every step's metrics so far


class RngState(TypedDict):
    """The random generators' states a checkpoint restores."""

    torch: Tensor
    python: tuple[Any, ...]  # random.getstate()
    cuda: NotRequired[list[Tensor]]


def _rng_state() -> RngState:
    import torch

    state: RngState = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: RngState) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    root: Path,
    model: Any,
    optimizer: Any,
    *,
    epoch: int,
    step: int,
    metrics: dict[str, float],
    history: list[dict[str, float]] | None = None,
) -> Checkpoint:
    """``history`` (every step's metrics so far) comes back on restore, so a resumed run's results file
    covers the steps before the pause too."""
    import torch

    final = root / f"epoch-{epoch}"
    tmp = root / f".epoch-{epoch}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp / "adapter")
        state = {
            "epoch": epoch,
            "step": step,
            "metrics": metrics,
            "history": list(history or []),
            "optimizer": optimizer.state_dict(),
            "rng": _rng_state(),
        }
        torch.save(state, tmp / STATE_FILE)
        atomic_write_json(tmp / "metrics.json", {"epoch": epoch, "step": step, **metrics})
        publish_dir(tmp, final)
    except BaseException:  # e.g. a full disk: the half-written checkpoint goes, older ones stay intact
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Checkpoint(final, epoch, step, metrics, list(history or []))


def latest_checkpoint(root: Path) -> Path | None:
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return max(found)[1] if found else None


def restore_checkpoint(path: Path, model: Any, optimizer: Any) -> Checkpoint:
    """Load adapter weights, optimizer and RNG state from ``path`` into a freshly wrapped model."""
    import torch
    from peft import load_peft_weights

    from worker.training.lora import load_adapter_state

    device = next(model.parameters()).device
    load_adapter_state(model, load_peft_weights(str(path / "adapter"), device=str(device)))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=False)  # optimizer moves it
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    history = [dict(h) for h in state.get("history") or []]
    return Checkpoint(path, int(state["epoch"]), int(state["step"]), dict(state["metrics"]), history)
