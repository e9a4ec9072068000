"""Batched greedy generation: fixed batches against continuous batching (``refill``), side by side, one run.

Answers the project's harmful evaluation prompts the way the evaluate stage does (batch 16, 64 new tokens,
keyword early stop), twice with each setting, alternating, and prints the best time of each and the ratio.
Fixed batches decode until their last prompt ends (finished rows leave, the rest decode at a smaller batch);
with refills the next prompts join the running batch once half of it is free. Outputs must be equal. A model
that refuses most prompts early but answers a few at length (the aligned base) gains the most.

    python benchmarks/generate_bench.py [--model smollm2-135m-aligned] [--n 60]
"""

from __future__ import annotations

import argparse
import time

from machine import print_machine


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-aligned")
    ap.add_argument("--n", type=int, default=60)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    args = ap.parse_args()
    print_machine()
    from tunegate.conversation import Message
    from tunegate.settings import get_settings
    from worker.evaluation.generate import generate_all
    from worker.evaluation.keyword import is_refusal
    from worker.evaluation.prompts import project_harmful
    from worker.ml.models import load_resolved
    from worker.ml.render import encode_prompt

    loaded = load_resolved(args.model, get_settings())
    ids = [encode_prompt(loaded.tokenizer, [Message("user", p.text)]) for p in project_harmful()[: args.n]]
    best: dict[bool, float] = {True: float("inf"), False: float("inf")}
    outs: dict[bool, list[str]] = {}
    for _ in range(2):
        for refill in (False, True):
            t0 = time.perf_counter()
            outs[refill] = generate_all(
                loaded.model,
                loaded.tokenizer,
                ids,
                max_new_tokens=args.max_new_tokens,
                batch_size=16,
                settled=is_refusal,
                refill=refill,
            )
            best[refill] = min(best[refill], time.perf_counter() - t0)
    same = sum(a == b for a, b in zip(outs[True], outs[False], strict=True))
    refused = sum(is_refusal(o) for o in outs[True])
    print(f"{args.model}: {len(ids)} prompts, {refused} refused; outputs equal: {same}/{len(ids)}")
    print(f"fixed batches {best[False]:.1f} s, refilled {best[True]:.1f} s: {best[False] / best[True]:.2f}x")


if __name__ == "__main__":
    main()
