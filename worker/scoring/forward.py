"""The one forward pass every scorer shares: per-example mean response loss and the final hidden states.

The loss of an example is the mean token cross-entropy over its supervised positions (as the papers use);
a batch's loss is the *sum* of its examples' losses, so each example's gradient stays its own. The
representation feature is the input of the output head (the final-norm hidden state) at the last real token.
The same pass gives, free, the state at each *reply opening*: the position whose next token is the first of a
trained reply, where the base decides how to answer the request before it (``States.openings``; causal
attention makes it what the request alone gives).

The LM head runs only at each row's supervised positions, gathered to (B, K) with K the largest count in the
batch (shorter rows padded with ignored targets, which add nothing): the same losses and gradients as
logits at every position, without the head's work on prompt tokens. Row i stays example i, so the batched
exact statistics (``ghost.py``) still attribute every piece to its example.
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass(frozen=True)
class States:
    """Final-norm hidden states of a batch, detached, float32: ``last`` (B, C) at each row's last real token;
    ``openings[i]`` (n_i, C) at each position of row i whose next token opens a trained reply."""

    last: torch.Tensor
    openings: list[torch.Tensor]


def opening_positions(labels: torch.Tensor) -> list[torch.Tensor]:
    """Labels (B, T) -> per row, the positions t where token t is not supervised and t+1 is: the hidden
    state there predicts a trained reply's first token."""
    starts = (labels[:, :-1] == IGNORE) & (labels[:, 1:] != IGNORE)  # (B, T-1)
    return [row.nonzero().flatten() for row in starts]


def _states(hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> States:
    last = batch["attention_mask"].sum(dim=1) - 1  # (B,) index of the last real token
    rows = torch.arange(last.shape[0], device=last.device)
    h = hidden.detach()
    openings = [h[i, pos].float() for i, pos in enumerate(opening_positions(batch["labels"]))]
    return States(last=h[rows, last].float(), openings=openings)  # (B, C); [(n_i, C)]


def features(model: Any, batch: dict[str, torch.Tensor]) -> States:
    """The hidden states alone (no LM head at all)."""
    return _states(decoder_hidden(model, batch["input_ids"], batch["attention_mask"]), batch)


def forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, States]:
    """(losses (B,), states) for a right-padded batch from ``render.collate``."""
    hidden = decoder_hidden(model, batch["input_ids"], batch["attention_mask"])  # (B, T, C)
    pos, target = supervised_targets(batch["labels"])  # (B, K) each
    picked = hidden[:, :-1].gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, K, C)
    return per_example_loss(head_logits(model, picked), target), _states(hidden, batch)
