"""The one forward pass every scorer shares: per-example mean response loss and the final hidden state.

The loss of an example is the mean token cross-entropy over its supervised positions (as the papers use);
a batch's loss is the *sum* of its examples' losses, so each example's gradient stays its own. The
representation feature is the input of the output head (the final-norm hidden state) at the last real token.

The LM head runs only at each row's supervised positions, gathered to (B, K) with K the largest count in the
batch (shorter rows padded with ignored targets, which add nothing): the same losses and gradients as
logits at every position, without the head's work on prompt tokens. Row i stays example i, so the batched
exact statistics (``ghost.py``) still attribute every piece to its example.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.ml.lm import decoder_hidden, head_logits
from worker.ml.render import IGNORE


def supervised_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels (B, T) -> (positions (B, K), targets (B, K)): for each row, the positions t whose next token
    t+1 is supervised, in order, then padding (position 0, target ``IGNORE``) up to K = the largest count."""
    target = labels[:, 1:]  # (B, T-1): position t predicts token t+1
    sup = target != IGNORE  # (B, T-1)
    k = max(1, int(sup.sum(dim=1).max()))
    # a stable sort of "not supervised" puts each row's supervised positions first, in their order
    pos = torch.sort((~sup).to(torch.int8), dim=1, stable=True).indices[:, :k]  # (B, K)
    keep = sup.gather(1, pos)  # (B, K)
    return pos.masked_fill(~keep, 0), target.gather(1, pos).masked_fill(~keep, IGNORE)


def per_example_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean CE over each row's supervised targets: logits (B, K, V), target (B, K) -> (B,)."""
    ce = torch.nn.functional.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        target.reshape(-1),
        ignore_index=IGNORE,
        reduction="none",
    ).view(target.shape)  # (B, K)
    count = (target != IGNORE).sum(dim=1).clamp(min=1)  # (B,)
    return ce.sum(dim=1) / count


def _last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    last = attention_mask.sum(dim=1) - 1  # (B,) index of the last real token
    rows = torch.arange(last.shape[0], device=last.device)
    return hidden[rows, last].detach().float()  # (B, C)


def features(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, C): the representation feature alone (no LM head at all)."""
    hidden = decoder_hidden(model, batch["input_ids"], batch["attention_mask"])  # (B, T, C)
    return _last_token(hidden, batch["attention_mask"])


def forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (B,), hidden (B, C)) for a right-padded batch from ``render.collate``."""
    hidden = decoder_hidden(model, batch["input_ids"], batch["attention_mask"])  # (B, T, C)
    pos, target = supervised_targets(batch["labels"])  # (B, K) each
    picked = hidden[:, :-1].gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, C)
    return per_example_loss(head_logits(model, picked), target), _last_token(hidden, batch["attention_mask"])
