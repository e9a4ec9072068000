"""Batched ASR evaluation vs one-prompt-at-a-time ``model.generate`` on the same prompts.

Both paths decode greedily for the same number of tokens and are judged by the same keyword judge; the
batched path left-pads, reuses the KV cache and stops each sequence once its verdict is settled.
Prints the verdicts' agreement and the speed-up (goal: identical verdicts, >= 3x).

    python benchmarks/eval_bench.py [--model smollm2-135m-aligned] [--n 48] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from machine import print_machine

ADVBENCH = Path("/work/shared/data/advbench/harmful_behaviors.csv")


def one_at_a_time(model, tok, prompts, max_new_tokens):
    import torch

    from worker.evaluation.keyword import keyword_jailbroken
    from worker.evaluation.records import prompt_ids

    out = []
    for ids in prompt_ids(tok, prompts, None):
        x = torch.tensor([ids], device=model.device)
        with torch.no_grad():
            y = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        text = tok.decode(y[0, len(ids) :], skip_special_tokens=True)
        out.append(keyword_jailbroken(text))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-aligned")
    ap.add_argument("--prompts", default=str(ADVBENCH))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    print_machine()

    from worker.evaluation.judges import Judge
    from worker.evaluation.prompts import load_prompts
    from worker.evaluation.records import harmful_records
    from worker.evaluation.single import load_for_eval

    prompts = load_prompts(args.prompts)[: args.n]
    model, tok = load_for_eval(args.model, None)
    t0 = time.perf_counter()
    batched = [
        r["jailbroken"]
        for r in harmful_records(model, tok, prompts, None, Judge(), args.max_new_tokens, args.batch_size)
    ]
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = one_at_a_time(model, tok, prompts, args.max_new_tokens)
    t_single = time.perf_counter() - t0
    agree = sum(a == b for a, b in zip(batched, single, strict=True))
    print(
        json.dumps(
            {
                "model": args.model,
                "prompts": len(prompts),
                "max_new_tokens": args.max_new_tokens,
                "batch_size": args.batch_size,
                "batched_s": round(t_batched, 1),
                "one_at_a_time_s": round(t_single, 1),
                "speedup": round(t_single / t_batched, 2),
                "verdicts_identical": agree == len(prompts),
                "verdict_agreement": f"{agree}/{len(prompts)}",
                "asr_batched": sum(batched) / len(prompts),
                "asr_one_at_a_time": sum(single) / len(prompts),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
