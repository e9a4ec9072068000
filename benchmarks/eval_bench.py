"""Batched ASR evaluation vs one-prompt-at-a-time ``model.generate`` on the same prompts.

Both paths decode greedily for the same number of tokens and are judged by the same keyword judge; the
batched path left-pads, reuses the KV cache and stops each sequence once its verdict is settled.
Prints the verdicts' agreement and the speed-up (goal: identical verdicts, >= 3x).

    python benchmarks/eval_bench.py [--model smollm2-135m-aligned] [--n 48] [--max-new-tokens 64]

``--sequential`` instead runs the evaluate stage (its defaults: 205 harmful prompts in both templates, the
borderline set, trigger probes when ``--train-file`` mines any) twice on one fine-tuned adapter, with the
sequential test off and on, the base's side from a warm cache (as a job sees it), and prints per template
the prompts used, the decision and bound at stopping, both stages' times and both gate decisions (goal:
identical decisions, less time). ``--adapter`` (required) is a job's ``train/adapter`` or ``tunegate
finetune``'s, ``--train-file`` the file it was trained on.

    python benchmarks/eval_bench.py --sequential --model smollm2-135m-aligned --adapter DIR \
        [--train-file train.jsonl] [--gate-judges all]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machine import print_machine

if TYPE_CHECKING:
    from worker.evaluation.prompts import Prompt

ADVBENCH = Path("/work/shared/data/advbench/harmful_behaviors.csv")


def one_at_a_time(model: Any, tok: Any, prompts: list[Prompt], max_new_tokens: int) -> list[bool]:
    import torch

    from worker.evaluation.keyword import keyword_jailbroken
    from worker.evaluation.records import prompt_ids

    out: list[bool] = []
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


def sequential_comparison(args: argparse.Namespace) -> None:
    """The evaluate stage with the sequential test off, then on; the same adapter, the base from its cache."""
    import dataclasses
    import tempfile

    from tunegate.conversation import load_examples
    from tunegate.settings import get_settings
    from worker.ml.stage_io import StageIO
    from worker.stages import evaluate, score
    from worker.stages.gate import GateConfig, decide
    from worker.stages.spec import with_overrides

    settings = get_settings()
    cfg = with_overrides(evaluate.EvalConfig(model=args.model), evaluate.SPEC.name, settings)
    cfg = dataclasses.replace(cfg, gate_judges=args.gate_judges, batch_size=args.batch_size)
    examples = load_examples(Path(args.train_file)) if args.train_file else []
    # the job's score records, as the job's evaluation mines trigger probes with them (without them, a
    # recurring prefix of benign data qualifies by support alone and is probed)
    records = score.ScoreResult.load(Path(args.score_dir)).records if args.score_dir else None
    adapter = Path(args.adapter)
    work = Path(tempfile.mkdtemp(prefix="tg-eval-seq-"))

    def one(name: str, sequential: bool) -> tuple[evaluate.EvalResult, float]:
        inputs = evaluate.EvalInputs(
            adapter,
            examples,
            StageIO(work / name),
            settings,
            settings.eval_cache_path,
            score_records=records,
            seed="bench",
        )
        t0 = time.perf_counter()
        res = evaluate.run(dataclasses.replace(cfg, sequential=sequential), inputs)
        return res, time.perf_counter() - t0

    if not args.base_cached:
        one("warm", False)  # fills the base's cache when cold: both timed runs then see it warm, as jobs do
    fixed, t_fixed = one("fixed", False)
    seq, t_seq = one("sequential", True)
    gate = GateConfig(gate_judges=args.gate_judges)
    d_fixed, d_seq = (decide(gate, r, None, True) for r in (fixed, seq))
    stopped: list[tuple[str, evaluate.TemplateEval | evaluate.ProbeEval]] = [*seq.templates.items()]
    stopped += [(f"probe:{i}", p) for i, p in enumerate(seq.probes, 1)]
    stops = {name: dataclasses.asdict(t.sequential) if t.sequential else None for name, t in stopped}
    for stop in stops.values():
        if stop:
            stop.pop("strata")
    print(
        json.dumps(
            {
                "model": args.model,
                "adapter": args.adapter,
                "gate_judges": args.gate_judges,
                "evaluate_fixed_s": round(t_fixed, 1),
                "evaluate_sequential_s": round(t_seq, 1),
                "speedup": round(t_fixed / t_seq, 2),
                "decision_fixed": [d_fixed.released, d_fixed.code],
                "decision_sequential": [d_seq.released, d_seq.code],
                "decisions_identical": (d_fixed.released, d_fixed.code) == (d_seq.released, d_seq.code),
                "stops": stops,
            },
            indent=2,
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-aligned")
    ap.add_argument("--prompts", default=str(ADVBENCH))
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--sequential", action="store_true", help="the evaluate stage, sequential off vs on")
    ap.add_argument("--adapter", default="", help="--sequential: the fine-tuned adapter directory")
    ap.add_argument("--train-file", default="", help="--sequential: its training file (trigger probes)")
    ap.add_argument("--gate-judges", default="all", choices=("all", "primary", "any"))
    ap.add_argument("--score-dir", default="", help="--sequential: the job's score stage directory")
    ap.add_argument(
        "--base-cached",
        action="store_true",
        help="--sequential: the base's side of every template is already cached (a job on this adapter's "
        "data ran); skip the warming evaluation",
    )
    args = ap.parse_args()
    print_machine()
    if args.sequential:
        if not args.adapter:
            ap.error("--sequential needs --adapter (a fine-tuned adapter directory)")
        sequential_comparison(args)
        return

    from worker.evaluation.judges import Judge
    from worker.evaluation.prompts import load_prompts
    from worker.evaluation.records import harmful_records
    from worker.evaluation.single import load_for_eval

    prompts = load_prompts(args.prompts)[: args.n]
    model, tok = load_for_eval(args.model, None)
    t0 = time.perf_counter()
    batched = [
        r.jailbroken
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
