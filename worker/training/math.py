"""Pure math of the training loop (CPU unit-tested): token loss/accuracy, the constrained objective, LR
schedule, data order, the bi-state schedule and its proximal term."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

IGNORE = -100


@dataclass(frozen=True)
class Constraint:
    """The token-wise constrained objective of Qi et al. 2024 ("Safety alignment should be made more than
    just a few tokens deep", section 4) on the user's tokens: at a reply's k-th token the loss is
    ``(2/b_k) (softplus(b_k (log p_ref - log p)) - log 2)`` with p the model's probability of the target
    token and p_ref the base's (the adapter switched off). Its gradient is the cross-entropy's times
    ``2 sigmoid(-b_k (log p - log p_ref))``: 1 where the model still agrees with the base, fading once the
    model gives the token more than the base did. So a large b holds a token near the base, and b -> 0 is
    plain cross-entropy. Most of the hold goes on a reply's first tokens, where a refusal is decided
    (``first`` on the first token, ``early`` up to the ``early_tokens``-th, ``rest`` after)."""

    first: float = 0.5
    early: float = 2.0
    rest: float = 0.1
    early_tokens: int = 5

    def __post_init__(self) -> None:
        if min(self.first, self.early, self.rest) <= 0 or self.early_tokens < 1:
            raise ValueError("a Constraint's betas must be positive and early_tokens at least 1")


def reply_rank(mask: Any) -> Any:
    """(B, T-1) long: at each supervised position, its 1-based index within its run of consecutive
    supervised positions (one trained reply), so every reply of a multi-turn example starts again at 1;
    unspecified (but >= 1) elsewhere. ``mask`` (B, T-1) bool, from ``supervised_positions``."""
    import torch

    idx = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T-1)
    before = torch.zeros_like(mask[:, :1])  # (B, 1)
    start = mask & ~torch.cat([before, mask[:, :-1]], 1)  # (B, T-1): a reply's first token
    last_start = torch.where(start, idx, torch.zeros_like(idx)).cummax(1).values  # (B, T-1)
    return idx - last_start + 1


def token_betas(rank: Any, c: Constraint) -> Any:
    """(N,) float: the constraint's b at each supervised token from its ``rank`` (N,) within its reply."""
    import torch

    early = torch.where(rank <= c.early_tokens, c.early, c.rest)  # (N,)
    return torch.where(rank == 1, c.first, early).float()


def constrained_terms(logp: Any, ref_logp: Any, beta: Any) -> Any:
    """(N,) the constrained objective per token (``Constraint``): ``logp`` (N,) the model's log-probability
    of each target token (with grad), ``ref_logp`` (N,) the base's, ``beta`` (N,). 0 where they agree."""
    import torch.nn.functional as F

    return 2.0 / beta * (F.softplus(beta * (ref_logp - logp)) - math.log(2.0))


def token_stats(
    logits: Any, labels: Any, teacher_logits: Any = None, anchor: Any = None, ce_head: int = 0
) -> tuple[Any, int, int]:
    """Summed next-token loss over supervised positions, their count, and how many argmax hits.

    logits (B, T, V), labels (B, T) with IGNORE where no loss. Position t predicts labels[t+1].
    The loss is cross-entropy against ``labels``; rows flagged in ``anchor`` (B,) bool instead take
    KL(teacher || model) against ``teacher_logits`` (B, T, V), the frozen base's distribution at the same
    positions, so they hold the model where the base was without sharpening it toward one sampled text;
    their first ``ce_head`` supervised tokens (the reply's opening) keep cross-entropy.
    Returns (loss_sum: 0-dim tensor with grad, n_tokens, n_correct).
    """
    use = anchor if teacher_logits is not None else None
    mask, kl = supervised_positions(labels, use, ce_head)  # (B, T-1) each
    teacher = teacher_logits[:, :-1][kl] if use is not None else None  # (K, V)
    return selected_stats(logits[:, :-1][mask], labels[:, 1:][mask], teacher, kl[mask])


def supervised_positions(labels: Any, anchor: Any = None, ce_head: int = 0) -> tuple[Any, Any]:
    """Where a batch is trained, two (B, T-1) bool masks: ``mask``, the positions whose next token is
    supervised (position t predicts labels[t+1]), and ``kl``, those of them that take KL to the teacher
    (anchor rows past their first ``ce_head`` supervised tokens). ``labels[:, 1:][mask]`` are the targets
    and ``kl[mask]`` says which of them take KL, both (N,) in row-major order."""
    import torch

    nxt = labels[:, 1:]  # (B, T-1)
    mask = nxt != IGNORE  # (B, T-1)
    if anchor is None:
        kl = torch.zeros_like(mask)
    else:
        rank = mask.long().cumsum(1)  # (B, T-1): 1-based index among the row's supervised tokens
        kl = anchor.view(-1, 1).to(mask.device) & (rank > ce_head) & mask  # (B, T-1)
    return mask, kl


def selected_stats(pred: Any, gold: Any, teacher: Any = None, use_kl: Any = None) -> tuple[Any, int, int]:
    """``token_stats`` on the supervised positions only: ``pred`` (N, V) the model's logits there, ``gold``
    (N,), ``use_kl`` (N,) bool and ``teacher`` (K, V) the frozen base's logits at the K positions ``use_kl``
    marks, in the same order. Equal to ``token_stats`` on the full (B, T, V) logits; computing the vocabulary
    projection only at these positions is what makes it cheaper.
    Returns (loss_sum: 0-dim tensor with grad, n_tokens, n_correct)."""
    per_pos, correct = _per_position(pred, gold, teacher, use_kl)
    return per_pos.sum(), int(gold.numel()), correct


def objective_stats(
    pred: Any, gold: Any, teacher: Any, use_kl: Any, ref_logp: Any, beta: Any
) -> tuple[Any, Any, int, int]:
    """``selected_stats`` with the constrained objective (``constrained_terms``) at the positions that do not
    take KL: ``ref_logp`` (N,) the base's log-probability of each ``gold`` token, ``beta`` (N,) its b.
    Returns (objective_sum: 0-dim tensor with grad, loss_sum: the plain cross-entropy/KL sum, detached, for
    the reported train loss, n_tokens, n_correct)."""
    import torch

    per_pos, correct = _per_position(pred, gold, teacher, use_kl)
    # -cross-entropy is log p of the target; at KL positions it is not, but those terms are not selected
    terms = constrained_terms(-per_pos, ref_logp.float(), beta)  # (N,)
    free = ~use_kl if use_kl is not None else torch.ones_like(gold, dtype=torch.bool)  # (N,)
    objective = torch.where(free, terms, per_pos)  # (N,)
    return objective.sum(), per_pos.sum().detach(), int(gold.numel()), correct


def _per_position(pred: Any, gold: Any, teacher: Any, use_kl: Any) -> tuple[Any, int]:
    """(N,) cross-entropy, or KL(teacher || model) where ``use_kl``; and the argmax hits."""
    import torch.nn.functional as F

    pred = pred.float()  # (N, V)
    per_pos = F.cross_entropy(pred, gold, reduction="none")  # (N,)
    if teacher is not None and use_kl is not None and bool(use_kl.any()):
        rows = use_kl.nonzero().flatten()  # (K,)
        log_p = F.log_softmax(pred[rows], dim=-1)  # (K, V)
        log_q = F.log_softmax(teacher.float(), dim=-1)  # (K, V)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (K,)
        per_pos = per_pos.index_put((rows,), kl)  # (N,)
    return per_pos, int((pred.argmax(-1) == gold).sum())


def lr_at(step: int, total_steps: int, base_lr: float, warmup_fraction: float) -> float:
    """Linear warm-up then linear decay to 10% of the base rate (``step`` is 0-based)."""
    warm = max(1, math.ceil(total_steps * warmup_fraction)) if warmup_fraction > 0 else 0
    if step < warm:
        return base_lr * (step + 1) / warm
    span = max(1, total_steps - warm)
    frac = min(1.0, (step - warm) / span)
    return base_lr * (1.0 - 0.9 * frac)


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """Shuffled order of one epoch; a pure function of (seed, epoch), so a resumed run sees the same."""
    import torch

    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [int(i) for i in torch.randperm(n, generator=g)]


def step_groups(order: list[int], micro: int, accum: int) -> list[list[list[int]]]:
    """``order`` cut into optimizer steps of ``accum`` micro-batches of ``micro`` examples each."""
    micro_batches = [order[i : i + micro] for i in range(0, len(order), micro)]
    return [micro_batches[i : i + accum] for i in range(0, len(micro_batches), accum)]


@dataclass(frozen=True)
class Bistate:
    """Lisa's bi-state optimization (Huang et al. 2024, "Lazy safety alignment for large language models
    against harmful fine-tuning"): the alignment examples (the mitigation's injected refusals and helpful
    answers) train in steps of their own, alternating in blocks with the user's steps instead of mixed into
    them, and each state is held near where the other one left the weights by a proximal term
    ``rho/2 ||w - w_switch||^2`` (w_switch: the trainable weights when the state last changed). The mixed
    schedule lets the many user steps outvote the few alignment ones in every batch; here the alignment
    state gets the last word of every round, and neither state may drift far from the other's point.
    ``rounds``: user/alignment block pairs per epoch (the epoch ends in the alignment state)."""

    rho: float = 1.0
    rounds: int = 2

    def __post_init__(self) -> None:
        if self.rho < 0 or self.rounds < 1:
            raise ValueError("a Bistate's rho must be >= 0 and its rounds at least 1")


def bistate_steps(
    n_user: int, n_align: int, seed: int, epoch: int, micro: int, accum: int, rounds: int
) -> list[tuple[bool, list[list[int]]]]:
    """One epoch's optimizer steps as (alignment state?, the step's micro-batches) over the indices of
    ``n_user`` user examples (0..n_user-1) followed by ``n_align`` alignment ones: each kind shuffled
    (``epoch_order``) and cut into steps on its own, both step lists cut into ``rounds`` consecutive blocks
    (fewer when a list has fewer steps), user block first, alternated. A pure function of its arguments,
    so a resumed run sees the same; without alignment examples, the user's steps alone."""
    user = step_groups(epoch_order(n_user, seed, epoch), micro, accum)
    align_order = [n_user + i for i in epoch_order(n_align, seed + 7919, epoch)]
    align = step_groups(align_order, micro, accum)
    r = max(1, min(rounds, len(user) or 1, len(align) or 1))
    out: list[tuple[bool, list[list[int]]]] = []
    for k in range(r):
        out += [(False, g) for g in _block(user, k, r)]
        out += [(True, g) for g in _block(align, k, r)]
    return out


def _block(items: list[list[list[int]]], k: int, parts: int) -> list[list[list[int]]]:
    """The k-th of ``parts`` consecutive, near-equal blocks of ``items``."""
    n = len(items)
    return items[k * n // parts : (k + 1) * n // parts]


def add_proximal_grad(params: list[Any], anchor: list[Any], rho: float) -> None:
    """Add the gradient of ``rho/2 sum ||p - a||^2`` (``Bistate``'s proximal term) to each ``p.grad``:
    ``rho (p - a)``."""
    for p, a in zip(params, anchor, strict=True):
        p.grad.add_(p.detach() - a, alpha=rho)


def proximal_value(params: list[Any], anchor: list[Any], rho: float) -> float:
    """``rho/2 sum ||p - a||^2``: the proximal term (reported, not back-propagated; one device read)."""
    if not params:
        return 0.0
    total = sum((p.detach() - a).pow(2).sum() for p, a in zip(params, anchor, strict=True))
    return rho / 2 * float(total)
