"""Batch-1 exact path: per-parameter hooks turn each parameter's gradient into two fp32 numbers and free it.

``register_post_accumulate_grad_hook`` fires once per parameter after its gradient is complete (tied weights
included: both uses are summed first). The hook adds ⟨g_p, d_p⟩ and ‖g_p‖² to running fp32 totals and drops
``p.grad``, so neither a flat per-example gradient nor a full set of ``.grad`` tensors ever exists at once.
Works for any architecture; the batched ghost path (``ghost.py``) is faster where it applies.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


class GradStatsHooks:
    """Accumulate ⟨g, d⟩ and ‖g‖² over all trainable parameters during ``backward()``."""

    def __init__(self, model: torch.nn.Module, direction: Mapping[str, torch.Tensor] | None) -> None:
        self.direction = direction
        self._handles: list[Any] = []
        self.dot = torch.zeros((), dtype=torch.float32)
        self.sq = torch.zeros((), dtype=torch.float32)
        for name, p in model.named_parameters():
            if p.requires_grad:
                self._handles.append(p.register_post_accumulate_grad_hook(self._hook(name)))

    def _hook(self, name: str) -> Any:
        def fn(p: torch.Tensor) -> None:
            assert p.grad is not None
            g = p.grad.float()  # fp32 accumulation whatever the model dtype
            self.sq = self.sq.to(g.device) + g.pow(2).sum()
            if self.direction is not None:
                d = self.direction[name].to(g.device)
                self.dot = self.dot.to(g.device) + (g * d).sum()
            p.grad = None

        return fn

    def reset(self) -> None:
        self.dot = torch.zeros((), dtype=torch.float32)
        self.sq = torch.zeros((), dtype=torch.float32)

    def result(self) -> tuple[float, float]:
        return float(self.dot), float(self.sq)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
