"""Batched exact path: capture each module's inputs and output gradients, then per-example statistics.

Inside ``GhostCapture`` every parameter is frozen and the input-embedding output is made a grad leaf, so
``backward()`` computes activation gradients only (no ``.grad`` anywhere). Forward hooks record, per call:

- ``nn.Linear``: input a (B, T, d_in), output gradient b (B, T, d_out) -> weight piece bᵀa, bias Σ_t b_t;
- ``nn.Embedding``: token ids (B, T) and output gradient δ (B, T, d) -> one-hot piece (rows ids_t += δ_t);
- RMSNorm-style modules (a single 1-D weight, y = w ⊙ x̂): x̂ and the output gradient -> Σ_t go_t ⊙ x̂_t.

With right padding and a loss that is a sum of per-example losses, row i of every captured tensor belongs to
example i only, so the per-example statistics are exact. A model with any other trainable parameter is
refused with ``UnsupportedModel`` (the caller falls back to the batch-1 hook path).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from worker.scoring.pieces import LowRank, Piece, Vec, stats


class UnsupportedModel(Exception):
    """The model has parameters the batched exact path cannot attribute per example."""


def _eps(module: torch.nn.Module) -> float | None:
    for attr in ("variance_epsilon", "eps"):
        val = getattr(module, attr, None)
        if isinstance(val, float):
            return val
    return None


def _rms_hat(x: torch.Tensor, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)  # (..., d)


def _is_rms_norm(module: torch.nn.Module) -> bool:
    """A module with exactly one 1-D ``weight`` whose output is weight ⊙ x̂ (checked numerically once)."""
    params = list(module.parameters(recurse=False))
    weight = getattr(module, "weight", None)
    eps = _eps(module)
    if len(params) != 1 or weight is None or weight.dim() != 1 or eps is None:
        return False
    with torch.no_grad():
        x = torch.randn(2, 3, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight)
        return torch.allclose(module(x).float(), (weight * _rms_hat(x, eps)).float(), rtol=1e-3, atol=1e-4)


@dataclass
class HookCall:
    """One forward call of a planned module in the batch: its kind, the module, its input (a norm's: the
    normalised x̂; an embedding's: the token ids) and, once the backward pass reaches it, the gradient at
    its output (None: no gradient reached it)."""

    kind: str  # linear | embedding | norm
    mod: torch.nn.Module
    x: torch.Tensor  # (B, T, d_in); an embedding's (B, T) ids
    g: torch.Tensor | None = None  # (B, T, d_out)

    def set_grad(self, g: torch.Tensor) -> None:
        self.g = g.detach()


class GhostCapture:
    """Context manager: per-example (⟨g, d⟩, ‖g‖²) for a batch without per-example gradients in memory."""

    def __init__(self, model: torch.nn.Module, direction: Mapping[str, torch.Tensor] | None) -> None:
        self.model, self.direction = model, direction
        self.names = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
        self.shapes = {n: p.shape for n, p in model.named_parameters()}
        self.calls: list[HookCall] = []
        self._plan = self._plan_modules()
        self._handles: list[Any] = []
        self._frozen: list[torch.nn.Parameter] = []

    def _plan_modules(self) -> list[tuple[str, torch.nn.Module]]:
        plan: list[tuple[str, torch.nn.Module]] = []
        covered: set[int] = set()
        for _, mod in self.model.named_modules():
            kind = self._kind(mod)
            if kind is None:
                continue
            plan.append((kind, mod))
            covered.update(id(p) for p in mod.parameters(recurse=False))
        missing = [n for i, n in self.names.items() if i not in covered]
        if missing:
            raise UnsupportedModel(f"no exact per-example rule for parameters: {', '.join(missing[:5])}")
        return plan

    @staticmethod
    def _kind(mod: torch.nn.Module) -> str | None:
        if isinstance(mod, torch.nn.Linear):
            return "linear"
        if isinstance(mod, torch.nn.Embedding):
            return "embedding"
        if _is_rms_norm(mod):
            return "norm"
        return None

    def __enter__(self) -> GhostCapture:
        self.calls = []
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        for kind, mod in self._plan:
            self._handles.append(mod.register_forward_hook(self._forward_hook(kind)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for p in self._frozen:
            p.requires_grad_(True)

    def _forward_hook(self, kind: str) -> Any:
        def hook(mod: torch.nn.Module, inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            call = HookCall(kind, mod, inputs[0].detach())
            if kind == "embedding":
                output = output.detach().requires_grad_(True)  # the grad leaf of the whole graph
            if kind == "norm":
                call.x = _rms_hat(inputs[0].detach(), _eps(mod) or 0.0)
            if output.requires_grad:
                output.register_hook(call.set_grad)
                self.calls.append(call)
            return output

        return hook

    def _pieces(self, i: int, n: int) -> dict[str, list[Piece]]:
        out: dict[str, list[Piece]] = defaultdict(list)
        for call in self.calls:
            mod, g = call.mod, call.g
            if g is None:
                continue
            x, go = call.x[i, :n], g[i, :n]  # (n, d_in), (n, d_out)
            w = self.names.get(id(mod.weight))
            if call.kind == "linear":
                if w is not None:
                    out[w].append(LowRank(a=x, b=go))
                if getattr(mod, "bias", None) is not None and id(mod.bias) in self.names:
                    out[self.names[id(mod.bias)]].append(Vec(go.float().sum(0)))
            elif call.kind == "embedding" and w is not None:
                keep = x != mod.padding_idx if mod.padding_idx is not None else slice(None)
                out[w].append(LowRank(a=go[keep], ids=x[keep]))  # autograd never updates the padding row
            elif w is not None:
                out[w].append(Vec((go.float() * x.float()).sum(0)))  # Σ_t go_t ⊙ x̂_t
        return out

    def example_stats(self, i: int, n: int) -> tuple[float, float]:
        """(⟨g_i, d⟩, ‖g_i‖²) of example i (its first n positions hold every nonzero gradient)."""
        dot, sq = 0.0, 0.0
        for name, pieces in self._pieces(i, n).items():
            d = self.direction[name] if self.direction is not None else None
            dd, ss = stats(pieces, self.shapes[name], d)
            dot, sq = dot + float(dd), sq + float(ss)
        return dot, sq
