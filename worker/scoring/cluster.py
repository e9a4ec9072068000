"""Dataset-level signal: do the high-risk examples form a coherent cluster in representation space?

A coordinated subset is what an attacker plants (spectral signatures, Tran et al. 2018, find one from the
centred representations). The test here: centre the file's per-example vectors (``engine.project``: a fixed
random projection of the final hidden state), normalise each to unit length, and take the mean pairwise
cosine within the high-risk set. Its null is the same statistic on random subsets of the same size from
the same file (seeded permutations); the p-value is (1 + #null ≥ observed) / (1 + n_perm). The set is
*coherent* when it has at least ``min_size`` members, p ≤ ``alpha`` and the mean cosine is at least
``min_cosine`` (an effect size: selecting the top of any score makes a set a little alike, so a p-value
alone would flag benign tails).

A coherent set is then *extended*: every other example whose cosine to the set's mean direction is at
least 3/4 of its loosest member's (and at least ``min_cosine``) joins it (``extend``), so planted examples
that scored just under the high-risk bar are named too. ``lines`` is the extended cluster; ``n`` the
high-risk set tested.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from tunegate import report, schema
from tunegate.jsontypes import JsonObject

METHOD = "mean within-set cosine of centred representations vs random subsets (permutation test)"


@dataclass(frozen=True)
class ClusterRules:
    n_perm: int = 200
    alpha: float = 0.01
    min_size: int = 3
    min_cosine: float = 0.3
    extend_ratio: float = 0.75  # join the cluster at this share of its loosest member's closeness
    seed: int = 0


@dataclass
class ClusterTest:
    coherent: bool = False
    n: int = 0
    lines: list[int] = field(default_factory=list)
    statistic: float | None = None  # mean pairwise cosine within the set
    null_mean: float | None = None  # the same on random subsets of the same size
    p_value: float | None = None
    method: str = METHOD
    extended: list[int] = field(default_factory=list)  # lines that joined by closeness (not high-risk)

    def to_dict(self) -> JsonObject:
        return schema.write(self)

    def record(self) -> report.ClusterTest:
        """The test as the screen's verdict holds it (``tunegate.report.ClusterTest``)."""
        return report.ClusterTest(
            coherent=self.coherent,
            n=self.n,
            lines=tuple(self.lines),
            statistic=self.statistic,
            null_mean=self.null_mean,
            p_value=self.p_value,
            method=self.method,
            extended=tuple(self.extended),
        )


def unit_centred(x: torch.Tensor) -> torch.Tensor:
    """(N, D) -> (N, D): rows minus the column mean, each scaled to unit length (a zero row stays zero)."""
    c = x.float() - x.float().mean(dim=0, keepdim=True)
    out: torch.Tensor = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return out


def mean_pair_cosine(u: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean cosine over distinct pairs of the unit rows ``u[idx]`` for each row of ``idx`` (P, k) -> (P,).
    Uses ‖Σ u_i‖² = Σ‖u_i‖² + Σ_{i≠j} ⟨u_i, u_j⟩."""
    sub = u[idx]  # (P, k, D)
    k = idx.shape[1]
    total = sub.sum(dim=1).pow(2).sum(dim=1)  # (P,)
    own = sub.pow(2).sum(dim=(1, 2))  # (P,)
    return (total - own) / (k * (k - 1))


def extend(u: torch.Tensor, members: Sequence[int], ratio: float = 0.75, floor: float = 0.3) -> list[int]:
    """Rows of the unit vectors ``u`` (N, D), not in ``members``, whose cosine to the members' mean
    direction is at least ``ratio`` times the smallest leave-one-out cosine of a member (to the mean of the
    others: a member's own vector would otherwise inflate its closeness), and at least ``floor``."""
    idx = list(members)
    total = u[idx].sum(dim=0)  # (D,)
    others = total[None] - u[idx]  # (k, D): each member's leave-one-out sum
    loo = (others * u[idx]).sum(dim=1) / others.norm(dim=1).clamp_min(1e-12)  # (k,)
    cos = u @ (total / total.norm().clamp_min(1e-12))  # (N,)
    floor = max(floor, ratio * float(loo.min()))
    inside = set(idx)
    return [i for i in range(u.shape[0]) if i not in inside and float(cos[i]) >= floor]


def coherence(
    vectors: torch.Tensor, members: Sequence[int], lines: Sequence[int], rules: ClusterRules | None = None
) -> ClusterTest:
    """Is the set ``members`` (row indices of ``vectors`` (N, D)) coherent? ``lines`` names each row."""
    rules = rules or ClusterRules()
    n, k = vectors.shape[0], len(members)
    named = sorted(int(lines[i]) for i in members)
    if k < max(2, rules.min_size) or k >= n:  # too few to be a cluster, or the whole file: no contrast
        return ClusterTest(n=k, lines=named)
    u = unit_centred(vectors)
    obs = float(mean_pair_cosine(u, torch.tensor([list(members)]))[0])
    gen = torch.Generator().manual_seed(rules.seed)
    perms = torch.stack([torch.randperm(n, generator=gen)[:k] for _ in range(rules.n_perm)])  # (P, k)
    null = mean_pair_cosine(u, perms)
    p = (1 + int((null >= obs).sum())) / (1 + rules.n_perm)
    coherent = p <= rules.alpha and obs >= rules.min_cosine
    joined = (
        sorted(int(lines[i]) for i in extend(u, members, rules.extend_ratio, rules.min_cosine))
        if coherent
        else []
    )
    return ClusterTest(
        coherent=coherent,
        n=k,
        lines=sorted(named + joined),
        extended=joined,
        statistic=round(obs, 4),
        null_mean=round(float(null.mean()), 4),
        p_value=round(p, 4),
    )
