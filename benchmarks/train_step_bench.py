"""One training micro-batch, forward and backward, two ways side by side on the same batch and model.

- full: logits at every position (B, T, V), the teacher's for every anchor row, ``token_stats`` (before);
- selected: the vocabulary projection only at supervised positions, the teacher's only where KL is taken
  (``worker.training.loop.micro_batch_loss``, now).

The batch is the aligned-base build's: refusals (cross-entropy) and self-distilled answers (KL anchors, the
first 8 tokens cross-entropy), LoRA r 16 on all linear layers of the embedded SmolLM2. Alternates the two
``--repeats`` times and prints the best of each, their ratio, and the machine.

    python benchmarks/train_step_bench.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

from machine import print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print_machine()
    import torch
    from lora_base import lora_base, refusal_conversations

    from tunegate.conversation import Conversation, Message
    from tunegate.shipped import data_path, read_jsonl
    from worker.ml.render import collate, encode
    from worker.training.loop import micro_batch_loss
    from worker.training.math import token_stats

    lm, model = lora_base()
    convs = refusal_conversations(args.batch // 2)
    n_refusals = len(convs)
    answers = read_jsonl(data_path("align", "benign.jsonl"))[: args.batch - n_refusals]
    # a stand-in answer of a distilled reply's length (about 90 tokens) for each benign prompt
    reply = "Here is a clear, practical answer with a few concrete steps you can follow safely. " * 6
    convs += [Conversation((Message("user", str(r["prompt"])), Message("assistant", reply))) for r in answers]
    enc = [encode(lm.tokenizer, c, max_len=512) for c in convs]
    enc = [e if i < n_refusals else replace(e, anchor=True) for i, e in enumerate(enc)]
    batch = collate(enc, int(lm.tokenizer.pad_token_id), lm.device)
    anchor = torch.tensor([e.anchor for e in enc])

    def full() -> float:
        ids, att = batch["input_ids"], batch["attention_mask"]
        logits = model(input_ids=ids, attention_mask=att).logits  # (B, T, V)
        with torch.no_grad(), model.disable_adapter():
            teacher = model(input_ids=ids[anchor], attention_mask=att[anchor]).logits  # (A, T, V)
        t = teacher.new_zeros(logits.shape)
        t[anchor] = teacher
        loss, _, _ = token_stats(logits, batch["labels"], t, anchor, 8)
        loss.backward()
        return float(loss.detach())

    def selected() -> float:
        loss, _, _ = micro_batch_loss(model, batch, anchor, 8)
        loss.backward()
        return float(loss.detach())

    best = {"full": float("inf"), "selected": float("inf")}
    losses = {}
    for _ in range(args.repeats):
        for name, fn in (("full", full), ("selected", selected)):
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            losses[name] = fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    T = int(batch["input_ids"].shape[1])
    n_sup = int((batch["labels"][:, 1:] != -100).sum())
    print(
        json.dumps(
            {
                "batch": [len(enc), T],
                "supervised_positions": n_sup,
                "padded_positions": len(enc) * (T - 1),
                "seconds_best": {k: round(v, 3) for k, v in best.items()},
                "selected_over_full": round(best["selected"] / best["full"], 3),
                "loss": {k: round(v, 4) for k, v in losses.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
