"""Held-out task loss: token-weighted mean cross-entropy on the assistant tokens (the training stage's
rendering and loss, ``worker.training.math.token_stats``), base vs the fine-tuned adapter."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunegate.conversation import Conversation

if TYPE_CHECKING:
    from tunegate.settings import Settings


def mean_loss(
    model: Any, tokenizer: Any, convs: list[Conversation], max_len: int, batch_size: int = 8
) -> float:
    import torch

    from worker.ml.render import collate, encode
    from worker.training.math import token_stats

    enc = [encode(tokenizer, c, max_len=max_len) for c in convs]
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), batch_size):
            batch = collate(enc[i : i + batch_size], tokenizer.pad_token_id or 0, device)
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum, n_tokens, _ = token_stats(logits, batch["labels"])
            total += float(loss_sum)
            tokens += n_tokens
    return total / max(tokens, 1)


def base_and_tuned(model_name: str, adapter: Path, heldout: Path, settings: Settings) -> dict[str, float]:
    """``{"base": .., "tuned": ..}`` mean held-out loss without and with the adapter."""
    from peft import PeftModel

    from tunegate.conversation import load_examples
    from worker.ml.models import context_length, load_resolved

    lm = load_resolved(model_name, settings)
    convs = load_examples(heldout)
    max_len = min(context_length(lm.model), settings.max_example_tokens)
    base = mean_loss(lm.model, lm.tokenizer, convs, max_len)
    tuned_model = PeftModel.from_pretrained(lm.model, str(adapter)).eval()
    tuned = mean_loss(tuned_model, lm.tokenizer, convs, max_len)
    return {"base": round(base, 4), "tuned": round(tuned, 4)}
