"""Safety overhead of a fine-tuning job: (score + mitigate + evaluate time) / training time.

Runs the real stages on N GSM8K training examples (default 100) with the default mitigation, in a fresh
temporary directory. The evaluation is timed twice: cold (base results computed) and as a job sees it once
the base model's results are cached (only the fine-tuned model is evaluated). Goal: ratio <= 0.5.

    python benchmarks/overhead_bench.py [--model smollm2-135m-aligned] [--n 100] [--epochs auto]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from gsm8k_data import gsm8k_conversations
from machine import print_machine

from tunegate.settings import get_settings

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    res = fn()
    return res, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-aligned")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--epochs", default="auto")
    args = ap.parse_args()
    print_machine()
    work = Path(tempfile.mkdtemp(prefix="tg-overhead-"))
    # A fresh base-evaluation cache, so "cold" really computes the base model's results. The model and
    # scoring caches are kept: they are built once per base model, not per job.
    os.environ["TUNEGATE_EVAL_CACHE_DIR"] = str(work / "eval-cache")
    from tunegate.settings import reset_settings

    reset_settings()

    from worker.ml.stage_io import StageIO
    from worker.stages import evaluate, mitigate, score, train

    examples = gsm8k_conversations(args.n)
    sres, t_score = timed(
        lambda: score.run(
            score.ScoreConfig(model=args.model),
            score.ScoreInputs(examples, StageIO(work / "score"), get_settings()),
        )
    )
    mres, t_mit = timed(
        lambda: mitigate.run(
            mitigate.MitigateConfig(),
            mitigate.MitigateInputs(examples, sres.records, StageIO(work / "mitigate")),
        )
    )
    from tunegate.conversation import load_examples

    train_set = load_examples(mres.train_file)
    epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
    tcfg = train.config_from_openai(args.model, {"n_epochs": epochs}, len(train_set))
    tres, t_train = timed(
        lambda: train.run(tcfg, train.TrainInputs(train_set, StageIO(work / "train"), get_settings()))
    )
    cfg = evaluate.EvalConfig(model=args.model)

    def ev(d: str) -> object:
        io, settings = StageIO(work / d), get_settings()
        inputs = evaluate.EvalInputs(
            Path(tres.adapter_dir), examples, io, settings, score_records=sres.records
        )
        return evaluate.run(cfg, inputs)

    eres, t_eval_cold = timed(lambda: ev("eval-cold"))  # base results computed (and cached in work/)
    _, t_eval_warm = timed(lambda: ev("eval-warm"))  # what later jobs on this base see
    print(
        json.dumps(
            {
                "model": args.model,
                "examples": len(examples),
                "train_examples": len(train_set),
                "epochs": tcfg.n_epochs,
                "score_s": round(t_score, 1),
                "mitigate_s": round(t_mit, 2),
                "train_s": round(t_train, 1),
                "evaluate_cold_s": round(t_eval_cold, 1),
                "evaluate_cached_base_s": round(t_eval_warm, 1),
                "trigger_probes": len(getattr(eres, "probes", [])),
                "overhead_ratio_cached_base": round((t_score + t_mit + t_eval_warm) / t_train, 3),
                "overhead_ratio_cold": round((t_score + t_mit + t_eval_cold) / t_train, 3),
                "workdir": str(work),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
