"""Post-training safety repair of a LoRA adapter from the base's own alignment difference (pure math, CPU
unit-tested; the adapter files are read and written by ``worker/training/repair_io.py``).

The aligned base is ``W_al = W_un + V`` per linear layer: ``V`` (out, in) is the exact difference the
alignment build added (``worker/prepare/align.py`` merges a LoRA, so ``V`` has the rank of that LoRA). A
user's adapter adds ``dW = s · B @ A`` (B (out, r), A (r, in), s = alpha / r). Benign fine-tuning erodes
safety partly by undoing ``V``; two repairs use ``V`` without any data or training
(``../shared/research/defenses_judges_practice.md``, "Defenses ... after training"):

- ``restore`` (after RESTA, Bhardwaj et al.): add ``alpha · V`` back, ``W = W_al + dW + alpha · V``: the
  adapter grows by V's rank (its thin SVD), the user's part unchanged.
- ``project`` (after Safe LoRA, Hsu et al.): in the layers whose update lies least in the alignment's
  subspace (cosine of ``dW`` with ``C dW`` below ``threshold``, ``C = V Vᵀ / ‖V‖_F``), replace ``dW`` by
  ``C dW`` (so ``B <- C B``); other layers keep their update.
- ``merge`` (after SafeMERGE, Djuhera et al.): the same per-layer test flags the layers whose update drifted
  out of the alignment's subspace; only those are merged with the safety update, ``(1 - w) dW + w V``
  (SafeMERGE's linear merge of the fine-tuned and a safety LoRA, V playing the safety LoRA, weight
  ``w`` = 0.2 as in its released models); the other layers keep ``dW`` as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RTOL = 1e-4  # singular values of V below RTOL x the largest are rounding noise of the merge, not alignment


def lora_delta(a: Any, b: Any, scale: float) -> Any:
    """dW = scale · B @ A: a (r, in), b (out, r) -> (out, in)."""
    return scale * (b @ a)


def thin_svd(v: Any, rtol: float = RTOL) -> tuple[Any, Any, Any]:
    """V (out, in) ≈ U diag(S) Vhᵀ with the numerically zero directions dropped: U (out, k), S (k,),
    Vh (k, in). k = 0 when V is zero (the layer was not aligned)."""
    import torch

    u, s, vh = torch.linalg.svd(v.double(), full_matrices=False)  # (out, m), (m,), (m, in)
    keep = int((s > rtol * s[0]).sum()) if s.numel() and float(s[0]) > 0 else 0
    return u[:, :keep].to(v.dtype), s[:keep].to(v.dtype), vh[:keep].to(v.dtype)


def restore_factors(
    a: Any,
    b: Any,
    scale: float,
    new_scale: float,
    usv: tuple[Any, Any, Any],
    alpha: float,
    keep: float = 1.0,
) -> tuple[Any, Any]:
    """The factors of ``keep · dW + alpha · V`` as one LoRA of scale ``new_scale``, from V's ``thin_svd``
    (U, S, Vh): A' (r + k, in) = [A; Vh], B' (out, r + k) = [B · keep · scale / new_scale, U diag(S) · alpha
    / new_scale]."""
    import torch

    u, s, vh = usv
    a2 = torch.cat([a, vh], dim=0)  # (r + k, in)
    b2 = torch.cat([b * (keep * scale / new_scale), u * s * (alpha / new_scale)], dim=1)  # (out, r + k)
    return a2, b2


def safety_projection(v: Any, b: Any) -> Any:
    """C @ B with C = V Vᵀ / ‖V‖_F (Safe LoRA's alignment matrix), without forming C: (out, r)."""
    import torch

    norm = torch.linalg.matrix_norm(v)
    return v @ (v.T @ b) / norm if float(norm) > 0 else torch.zeros_like(b)


def cosine(x: Any, y: Any) -> float:
    """Frobenius cosine of two same-shaped tensors (0 when either is zero)."""
    nx, ny = float(x.norm()), float(y.norm())
    return float((x * y).sum()) / (nx * ny) if nx > 0 and ny > 0 else 0.0


@dataclass(frozen=True)
class LayerRepair:
    """What the repair did to one adapted layer (``module`` as in the base's state dict)."""

    module: str
    safety_rank: int  # k: the rank of V in this layer
    similarity: float  # cosine(dW, C dW); the projection's per-layer test
    changed: bool
    delta_norm: float  # ‖dW‖_F before
    repaired_norm: float  # ‖dW'‖_F after (the user's part plus what the repair added)


def safety_similarity(a: Any, b: Any, scale: float, v: Any) -> float:
    """cosine(dW, C dW): how much of the layer's update lies in the alignment's subspace (1: all of it, 0:
    none, or the layer was not aligned). Safe LoRA's and SafeMERGE's per-layer test."""
    return cosine(lora_delta(a, b, scale), lora_delta(a, safety_projection(v, b), scale))


def project_layer(a: Any, b: Any, scale: float, v: Any, threshold: float) -> tuple[Any, LayerRepair]:
    """Safe LoRA on one layer: (B', record); B' = C B when cosine(dW, C dW) < threshold, else B. A layer
    the alignment did not change (V = 0, so C = 0) keeps its update: there is no subspace to project on."""
    pb = safety_projection(v, b)  # (out, r)
    dw, pdw = lora_delta(a, b, scale), lora_delta(a, pb, scale)  # (out, in) each
    sim = cosine(dw, pdw)
    rank = thin_svd(v)[1].numel()
    changed = rank > 0 and sim < threshold
    out = pb if changed else b
    rec = LayerRepair("", rank, sim, changed, float(dw.norm()), float(lora_delta(a, out, scale).norm()))
    return out, rec


def merge_weights(
    similarity: float, safety_rank: int, threshold: float, weight: float
) -> tuple[float, float]:
    """SafeMERGE's per-layer choice, as (keep, add): the layer's update becomes ``keep · dW + add · V``. A
    layer whose update drifted out of the alignment's subspace (similarity below ``threshold``) and that the
    alignment changed (rank > 0) is merged, ``(1 - weight, weight)``; any other keeps its update,
    ``(1, 0)``."""
    if safety_rank > 0 and similarity < threshold:
        return 1.0 - weight, weight
    return 1.0, 0.0
