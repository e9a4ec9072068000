"""Activations for the refusal direction: the residual stream entering one block, at the last prompt token.

Prompts are left-padded, so position -1 is every prompt's last token (the assistant header's final
token of the chat template in use).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from worker.evaluation.generate import _left_pad
from worker.ml.lm import block_input


def default_layer(model: Any, fraction: float) -> int:
    n_layers = int(
        getattr(getattr(model, "config", None), "num_hidden_layers", 0)
        or model.get_base_model().config.num_hidden_layers
    )
    return layer_at(n_layers, fraction)


def layer_at(n_layers: int, fraction: float) -> int:
    """The block at ``fraction`` of a model's depth, kept off the first and the last."""
    return max(1, min(n_layers - 1, round(fraction * n_layers)))


def last_token_acts(
    model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], layer: int, batch_size: int = 16
) -> Any:
    """(N, D) float32: the input to block ``layer`` (hidden_states[layer]) at the last prompt token."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for s in range(0, len(prompts), batch_size):
            ids, mask = _left_pad(prompts[s : s + batch_size], int(tokenizer.pad_token_id), device)  # (B, T)
            pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
            h = block_input(model, layer, input_ids=ids, attention_mask=mask, position_ids=pos)  # (B, T, D)
            out.append(h[:, -1, :].float().cpu())  # (B, D)
    return torch.cat(out, 0)  # (N, D)
