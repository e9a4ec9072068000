"""Pure math of the training loop (CPU unit-tested): token loss/accuracy, LR schedule, data order."""

from __future__ import annotations

import math
from typing import Any

IGNORE = -100


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
    import torch.nn.functional as F

    pred = pred.float()  # (N, V)
    per_pos = F.cross_entropy(pred, gold, reduction="none")  # (N,)
    if teacher is not None and use_kl is not None and bool(use_kl.any()):
        rows = use_kl.nonzero().flatten()  # (K,)
        log_p = F.log_softmax(pred[rows], dim=-1)  # (K, V)
        log_q = F.log_softmax(teacher.float(), dim=-1)  # (K, V)
        kl = (log_q.exp() * (log_q - log_p)).sum(-1)  # (K,)
        per_pos = per_pos.index_put((rows,), kl)  # (N,)
    correct = (pred.argmax(-1) == gold).sum()
    return per_pos.sum(), int(gold.numel()), int(correct)


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


def steps_per_epoch(n: int, micro_batch: int, grad_accum: int) -> int:
    return math.ceil(math.ceil(n / micro_batch) / grad_accum)
