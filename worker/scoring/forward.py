"""The one forward pass every scorer shares: per-example mean response loss and the final hidden state.

The loss of an example is the mean token cross-entropy over its supervised positions (as the papers use);
a batch's loss is the *sum* of its examples' losses, so each example's gradient stays its own. The
representation feature is the input of the output head (the final-norm hidden state) at the last real token.
"""

from __future__ import annotations

from typing import Any

import torch

from worker.ml.render import IGNORE


def per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over each row's supervised tokens: logits (B, T, V), labels (B, T) -> (B,)."""
    logits = logits[:, :-1].float()  # (B, T-1, V): position t predicts token t+1
    target = labels[:, 1:]  # (B, T-1)
    ce = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=IGNORE, reduction="none"
    ).view(target.shape)  # (B, T-1)
    count = (target != IGNORE).sum(dim=1).clamp(min=1)  # (B,)
    return ce.sum(dim=1) / count


def forward(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(losses (B,), hidden (B, C)) for a right-padded batch from ``render.collate``."""
    captured: dict[str, torch.Tensor] = {}
    head = model.get_output_embeddings()

    def grab(_mod: Any, inputs: tuple[torch.Tensor, ...]) -> None:
        captured["h"] = inputs[0]

    handle = head.register_forward_pre_hook(grab)
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    finally:
        handle.remove()
    last = batch["attention_mask"].sum(dim=1) - 1  # (B,) index of the last real token
    rows = torch.arange(last.shape[0], device=last.device)
    hidden = captured["h"][rows, last].detach().float()  # (B, C)
    return per_example_loss(out.logits, batch["labels"]), hidden
