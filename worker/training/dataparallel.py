"""Data-parallel training over a few CPU processes: each takes a share of every optimizer step's examples,
and the gradients are summed across them (gloo, on this machine) before the step.

The loss of a step is the sum over its supervised tokens divided by the step's token count, so each process
divides its share by the whole step's count, and the summed gradient is the one a single process would
compute. Every process then clips and steps the same way from the same state: the adapters stay identical.
Used by the aligned-base build (``worker/prepare/align.py``) and a job's CPU training
(``worker/stages/train_ranks.py``, ``TUNEGATE_TRAIN_PROCESSES``; docs/benchmarks.md, "Data-parallel CPU
training of a job").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
# gradients are summed every step, so every process waits on the slowest: more processes, more waiting
# (and each holds its own copy of the model); the one bound for a job's training and the aligned-base build
MAX_WORLD = 4
# below this size of weights (about 10M parameters in bf16) the processes' start costs more than they save
MIN_MODEL_BYTES = 20_000_000
JOIN_TIMEOUT = timedelta(minutes=10)  # a process that never arrives (or a collective that never completes)


def cpu_world(requested: int, device_kind: str, threads: int, step_examples: int, model_bytes: int) -> int:
    """How many data-parallel processes train on ``device_kind`` (1: this process alone). ``requested``:
    the setting (0: auto, one per torch thread ``threads`` for a model of ``model_bytes`` of at least
    ``MIN_MODEL_BYTES``); never more than an optimizer step's examples or ``MAX_WORLD``."""
    if device_kind != "cpu" or requested == 1:
        return 1
    wanted = requested or (threads if model_bytes >= MIN_MODEL_BYTES else 1)
    return max(1, min(wanted, step_examples, MAX_WORLD))


@dataclass(frozen=True)
class Shard:
    rank: int
    world: int

    def take(self, items: Sequence[T]) -> list[T]:
        """This process's share: items rank, rank + world, rank + 2 world, ..."""
        return list(items[self.rank :: self.world])

    def sum_(self, tensors: Sequence[Any]) -> None:
        """Sum ``tensors`` across the processes, in place (one flat buffer, one all-reduce)."""
        import torch
        import torch.distributed as dist

        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        offset = 0
        for t in tensors:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def join(rank: int, world: int, rendezvous: Path) -> Shard:
    """Join the group of ``world`` processes meeting at the (not yet existing) file ``rendezvous``."""
    import torch.distributed as dist

    if world > 1:
        dist.init_process_group(
            "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world, timeout=JOIN_TIMEOUT
        )
    return Shard(rank, world)


def leave(shard: Shard) -> None:
    import torch.distributed as dist

    if shard.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
