"""How the engine computes each scorer: its hook, registered under the scorer's name in ``HOOKS``.

A scorer's data (its label, its reason's words, whether it needs the gradient and the direction, its
companions) is its ``tunegate.scorers.ScorerSpec``, on the ground floor; its hook needs torch, so it is
registered here. ``Engine`` dispatches on this mapping: for each scorer asked for, it calls the hook with the
example's ``Pass`` and records the values it returns (the scorer's own, under its name, and its companions').
A test checks that every spec has a hook and every hook a spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from worker.ml.render import Encoded
from worker.scoring.anchors import AnchorFeatures
from worker.scoring.math import max_cosine, self_inf_n, unit_direction


@dataclass(frozen=True)
class Pass:
    """What one example's forward (and, when a scorer needs it, backward) pass gives a scorer's hook."""

    example: Encoded
    hidden: torch.Tensor  # (C,) the final-norm hidden state at the last real token
    openings: torch.Tensor  # (n, C) the final-norm hidden state at each trained reply's opening
    anchors: AnchorFeatures
    grad_stats: tuple[float, float] | None  # (⟨g, d⟩, ‖g‖²); None when no scorer asked for needs a gradient

    @property
    def stats(self) -> tuple[float, float]:
        """(⟨g, d⟩, ‖g‖²): only for a scorer whose spec says ``needs_gradient`` (⟨g, d⟩ is 0 unless one says
        ``needs_direction``)."""
        if self.grad_stats is None:
            raise RuntimeError("a scorer read the gradient without its spec saying needs_gradient")
        return self.grad_stats


# a scorer's hook: the example's pass -> its raw values (its own under its name, and its companions')
Hook = Callable[[Pass], dict[str, float]]


def representation(p: Pass) -> dict[str, float]:
    """Max cosine of the hidden state to the harmful anchors, to the safe ones, and their difference; and the
    request probe's reading (P(harmful request), the largest over the example's trained replies)."""
    harm = float(max_cosine(p.hidden[None], p.anchors.harm_h.to(p.hidden.device))[0])
    safe = float(max_cosine(p.hidden[None], p.anchors.safe_h.to(p.hidden.device))[0])
    out = {"representation": harm, "representation_safe": safe, "representation_diff": harm - safe}
    if len(p.openings):
        out["request_harm"] = float(p.anchors.request.proba(p.openings.cpu()).max())
    return out


def gradient(p: Pass) -> dict[str, float]:
    """⟨g/‖g‖, d⟩."""
    dot, sq = p.stats
    return {"gradient": unit_direction(dot, sq)}


def selfinf(p: Pass) -> dict[str, float]:
    """Self-Inf-N = log(‖g‖² + 1) + log(L + 1), L the supervised token count."""
    _, sq = p.stats
    return {"selfinf": self_inf_n(sq, p.example.n_response_tokens)}


# scorer name -> its hook (each named as its scorer in ``tunegate.scorers.SCORERS``); read when used, like the
# table, so a hook registered here is dispatched at once
HOOKS: dict[str, Hook] = {hook.__name__: hook for hook in (representation, gradient, selfinf)}
