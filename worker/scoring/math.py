"""The pure math core of the three scorers (CPU-testable, no model in sight).

Notation: a linear layer y = x Wᵀ (+ b) applied to one example's T tokens has inputs A (T, d_in) and output
gradients B = ∂loss/∂y (T, d_out). Its weight gradient is G = Bᵀ A (d_out, d_in). The ghost identities give
the
two numbers the scorers need without forming G:

    ⟨G, D⟩   = Σ_t ⟨B_t, D A_t⟩ = Σ ((B D) ⊙ A)
    ‖G‖²_F  = Σ ((A Aᵀ) ⊙ (B Bᵀ))

Self-Inf-N (Guan et al. 2025): log(‖g‖² + 1) + log(L + 1) with L the supervised token count.
Gradient anchoring (He et al. 2024): ⟨g/‖g‖, d⟩ with d = m_harm − m_safe1 − m_safe2.

"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def ghost_dot(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """⟨Bᵀ A, D⟩ for a (T, d_in), b (T, d_out), d (d_out, d_in); fp32 scalar."""
    return ((b.float() @ d.float()) * a.float()).sum()  # (T, d_in) ⊙ (T, d_in)


def ghost_sq_norm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """‖Bᵀ A‖²_F without forming it: Σ (A Aᵀ) ⊙ (B Bᵀ); fp32 scalar."""
    a, b = a.float(), b.float()
    return ((a @ a.T) * (b @ b.T)).sum()  # (T, T) ⊙ (T, T)


def direct_stats(
    a: torch.Tensor, b: torch.Tensor, d: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(⟨G, D⟩, ‖G‖²) by forming G = Bᵀ A once (cheaper than ghost when T (d_in + d_out) > d_in d_out)."""
    g = b.float().T @ a.float()  # (d_out, d_in)
    dot = (g * d.float()).sum() if d is not None else torch.zeros((), dtype=torch.float32, device=g.device)
    return dot, g.pow(2).sum()


def prefer_ghost(t: int, d_in: int, d_out: int) -> bool:
    """Ghost norm costs ~T²(d_in + d_out); forming G costs ~T d_in d_out."""
    return t * (d_in + d_out) <= d_in * d_out


def unit_direction(dot: float, sq_norm: float) -> float:
    """⟨g/‖g‖, d⟩ from ⟨g, d⟩ and ‖g‖² (0 for a zero gradient, which then carries no direction)."""
    if sq_norm <= 0.0:
        return 0.0
    return dot / math.sqrt(sq_norm)


def self_inf_n(sq_norm: float, n_tokens: int) -> float:
    """Self-Inf-N = log(‖g‖² + 1) + log(L + 1)."""
    return math.log1p(sq_norm) + math.log1p(n_tokens)


def bidirectional(harm: torch.Tensor, safe: Sequence[torch.Tensor]) -> torch.Tensor:
    """d = m_harm − Σ m_safe (each m a mean of unit gradients), in fp32."""
    out = harm.float().clone()
    for s in safe:
        out -= s.float()
    return out


def max_cosine(h: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Max cosine of each row of h (N, C) to the anchor rows (M, C) -> (N,), fp32."""
    hn = torch.nn.functional.normalize(h.float(), dim=-1)
    an = torch.nn.functional.normalize(anchors.float(), dim=-1)
    return (hn @ an.T).max(dim=-1).values  # (N, M) -> (N,)


def percentile_of(value: float, reference: Sequence[float]) -> float:
    """Share of reference values ≤ value, in 0..100 (the empirical CDF, ties counted as below)."""
    if not reference:
        return 50.0
    below = sum(1 for r in reference if r <= value)
    return 100.0 * below / len(reference)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile, q in 0..1."""
    if not values:
        raise ValueError("quantile of an empty sequence")
    xs = sorted(values)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan when undefined."""
    if len(x) != len(y) or len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    vx = sum((a - mx) ** 2 for a in rx)
    vy = sum((b - my) ** 2 for b in ry)
    if vx == 0 or vy == 0:
        return float("nan")
    return cov / math.sqrt(vx * vy)


def ranks(v: Sequence[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    ranks = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return ranks
