"""Helpfulness check of the aligned base: GSM8K answer loss, aligned vs unaligned (goal: within 10%).

Mean response-token cross-entropy (teacher forcing, chat template, the training stage's rendering) on
the first N examples of GSM8K's test split, for each model given; prints the losses and their ratio to the
first model.

    python benchmarks/gsm8k_loss.py [--n 50] [--models smollm2-135m smollm2-135m-aligned]
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from gsm8k_data import gsm8k_conversations
from machine import print_machine

if TYPE_CHECKING:
    from tunegate.conversation import Conversation


def mean_loss(model_name: str, convs: list[Conversation], batch_size: int = 8) -> float:
    """Token-weighted mean cross-entropy over all supervised response tokens."""
    import torch

    from worker.ml.models import context_length, load_resolved
    from worker.ml.render import collate, encode
    from worker.training.math import token_stats

    lm = load_resolved(model_name)
    enc = [encode(lm.tokenizer, c, max_len=context_length(lm.model)) for c in convs]
    pad = lm.tokenizer.pad_token_id or 0
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(enc), batch_size):
            part = enc[i : i + batch_size]
            batch = collate(part, pad, lm.device)
            logits = lm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss_sum, n_tokens, _ = token_stats(logits, batch["labels"])  # the training stage's own loss
            total += float(loss_sum)
            tokens += n_tokens
    return total / tokens


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "smollm2-135m-aligned"])
    args = ap.parse_args()
    print_machine()
    convs = gsm8k_conversations(args.n, split="test")
    losses = {m: mean_loss(m, convs) for m in args.models}
    first = losses[args.models[0]]
    print(
        json.dumps(
            {
                "examples": len(convs),
                "loss": {m: round(v, 4) for m, v in losses.items()},
                "ratio_to_first": {m: round(v / first, 4) for m, v in losses.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
