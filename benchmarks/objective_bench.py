"""The cost of one training micro-batch (forward and backward) under each training objective, side by side
on the same batch and model.

The batch is a job's: ``--user`` GSM8K examples (the user's data) and ``--injected`` project refusals (the
mitigation's safety examples), LoRA r 16 on all linear layers of the embedded aligned SmolLM2. Objectives
(``worker.training.loop.micro_batch_objective``):

- sft: cross-entropy everywhere (the loss before);
- constrained: the user's tokens by the token-wise constrained objective (one adapter-off pass, no grad);
- anchored: the injected rows take KL to the adapter-off base past their first 8 tokens;
- both: constrained and anchored (one adapter-off pass serves both).

Alternates them ``--repeats`` times and prints the best of each, its ratio to sft, and the machine.

    python benchmarks/objective_bench.py [--user 6] [--injected 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from gsm8k_data import gsm8k_conversations
from machine import print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--user", type=int, default=6)
    ap.add_argument("--injected", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print_machine()
    import torch
    from lora_base import lora_base, refusal_conversations

    from worker.ml.render import collate, encode
    from worker.training.loop import micro_batch_objective
    from worker.training.math import Constraint

    lm, model = lora_base()
    convs = gsm8k_conversations(args.user) + refusal_conversations(args.injected)
    enc = [encode(lm.tokenizer, c, max_len=512) for c in convs]
    batch = collate(enc, int(lm.tokenizer.pad_token_id), lm.device)
    injected = torch.tensor([i >= args.user for i in range(len(enc))])  # (B,)
    none = torch.zeros_like(injected)

    def step(anchor: torch.Tensor, constraint: Constraint | None) -> Callable[[], float]:
        def go() -> float:
            objective, _, _, _ = micro_batch_objective(model, batch, anchor, 8, constraint)
            objective.backward()
            return float(objective.detach())

        return go

    ways = {
        "sft": step(none, None),
        "constrained": step(none, Constraint()),
        "anchored": step(injected, None),
        "both": step(injected, Constraint()),
    }
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.repeats):
        for name, fn in ways.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    T = int(batch["input_ids"].shape[1])
    print(
        json.dumps(
            {
                "batch": [len(enc), T],
                "user_rows": args.user,
                "injected_rows": args.injected,
                "supervised_positions": int((batch["labels"][:, 1:] != -100).sum()),
                "seconds_best": {k: round(v, 3) for k, v in best.items()},
                "over_sft": {k: round(v / best["sft"], 3) for k, v in best.items()},
                "constraint": repr(Constraint()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
