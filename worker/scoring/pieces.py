"""One example's gradient of one parameter, kept as factors, and the two numbers the scorers take from it.

A parameter may receive gradient from several module calls (a tied embedding is both the input embedding and
``lm_head``). Each call leaves a piece:

- ``LowRank(a, b)``: G = bᵀ a with a (T, d_in) and b (T, d_out) (a linear layer);
- ``LowRank(a, ids=ids)``: G = onehot(ids)ᵀ a, i.e. row ids[t] gets a[t] (an embedding lookup);
- ``Vec(g)``: the piece itself, already small (a bias, a norm weight).

``stats`` returns (⟨G, D⟩, ‖G‖²) for G = Σ pieces, exactly, in fp32, either from the ghost identities (cross
terms between pieces included) or by forming G for this one parameter when that is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from worker.scoring.math import ghost_dot, prefer_ghost


@dataclass
class LowRank:
    a: torch.Tensor  # (T, d_in)
    b: torch.Tensor | None = None  # (T, d_out) dense output gradients
    ids: torch.Tensor | None = None  # (T,) token ids: one-hot rows instead of b


@dataclass
class Vec:
    g: torch.Tensor  # the parameter's full per-example gradient (small)


Piece = LowRank | Vec


def materialize(piece: Piece, shape: torch.Size) -> torch.Tensor:
    """Form the piece as a dense fp32 tensor of the parameter's shape."""
    if isinstance(piece, Vec):
        return piece.g.float().reshape(shape)
    if piece.ids is not None:
        out = torch.zeros(shape, dtype=torch.float32, device=piece.a.device)
        return out.index_add_(0, piece.ids, piece.a.float())  # (V, d)
    assert piece.b is not None
    return piece.b.float().T @ piece.a.float()  # (d_out, d_in)


def _gram_b(p: LowRank, q: LowRank) -> torch.Tensor:
    """B_p B_qᵀ (T_p, T_q) with one-hot factors handled by indexing."""
    if p.ids is None and q.ids is None:
        assert p.b is not None and q.b is not None
        return p.b.float() @ q.b.float().T
    if p.ids is None:
        assert p.b is not None and q.ids is not None
        return p.b.float()[:, q.ids]
    if q.ids is None:
        assert q.b is not None
        return q.b.float()[:, p.ids].T
    return (p.ids[:, None] == q.ids[None, :]).float()


def _low_dot(p: LowRank, d: torch.Tensor) -> torch.Tensor:
    if p.ids is not None:
        return (d.float()[p.ids] * p.a.float()).sum()  # Σ_t ⟨D[ids_t], a_t⟩
    assert p.b is not None
    return ghost_dot(p.a, p.b, d)


def _ghost(pieces: list[LowRank], d: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    dot = torch.zeros((), dtype=torch.float32, device=pieces[0].a.device)
    sq = torch.zeros((), dtype=torch.float32, device=pieces[0].a.device)
    for k, p in enumerate(pieces):
        if d is not None:
            dot = dot + _low_dot(p, d)
        for q in pieces[k:]:
            term = ((p.a.float() @ q.a.float().T) * _gram_b(p, q)).sum()  # (T_p, T_q) ⊙ (T_p, T_q)
            sq = sq + (term if q is p else 2.0 * term)
    return dot, sq


def _cheaper_as_ghost(pieces: list[Piece], shape: torch.Size, need_dot: bool) -> bool:
    if need_dot or any(isinstance(p, Vec) for p in pieces):
        return False  # ⟨G, D⟩ costs a full T·d_in·d_out either way; forming G then adds only O(d_in·d_out)
    t = sum(p.a.shape[0] for p in pieces if isinstance(p, LowRank))
    d_out, d_in = (shape[0], shape[1]) if len(shape) == 2 else (shape[0], 1)
    return prefer_ghost(t, d_in, d_out)


def stats(
    pieces: list[Piece], shape: torch.Size, d: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(⟨G, D⟩, ‖G‖²) of G = Σ pieces; ⟨G, D⟩ is 0 when ``d`` is None."""
    if _cheaper_as_ghost(pieces, shape, d is not None):
        low = [p for p in pieces if isinstance(p, LowRank)]
        return _ghost(low, d)
    g = materialize(pieces[0], shape)
    for p in pieces[1:]:
        g = g + materialize(p, shape)
    dot = (g * d.float()).sum() if d is not None else torch.zeros((), dtype=torch.float32, device=g.device)
    return dot, g.pow(2).sum()
