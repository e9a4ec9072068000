"""Build aligned-base variants side by side and measure the four goals of each (docs/aligned_base.md).

Self-distillation runs once (``distil``: the unaligned model's greedy answers, kept in
``OUT/distilled-N-T.jsonl``) and every variant reuses those answers, cut to its own answer length.
Each variant is an ``AlignConfig`` override built into ``OUT/<name>/model`` and then measured: keyword ASR
on AdvBench's first 100 prompts, XSTest's 250 safe prompts refused, GSM8K answer loss (first 50 test
examples; the unaligned model's is 1.458) and the build's wall time. Resumable: a variant whose
``result.json`` exists is skipped.

    python benchmarks/align_variants.py distil --out OUT [--n 240 --max-new-tokens 96]
    python benchmarks/align_variants.py build --out OUT --name v1 --set n_epochs=1 --set n_refusals=100
    python benchmarks/align_variants.py table --out OUT
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from machine import machine_info, print_machine

if TYPE_CHECKING:
    from tunegate.conversation import Conversation
    from tunegate.jsontypes import JsonObject

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def distil(out: Path, n: int, max_new_tokens: int) -> Path:
    from tunegate.conversation import dump_examples
    from tunegate.settings import get_settings
    from worker.ml.stage_io import StageIO
    from worker.prepare.align import AlignConfig, distilled_examples

    path = out / f"distilled-{n}-{max_new_tokens}.jsonl"
    if path.is_file():
        return path
    settings = get_settings()
    t0 = time.monotonic()
    cfg = AlignConfig(n_distill=n, distill_max_new_tokens=max_new_tokens)
    convs, dropped = distilled_examples(cfg, settings, StageIO(out / ".distil"))
    dump_examples(convs, path)
    info: dict[str, float] = {
        "n": n,
        "max_new_tokens": max_new_tokens,
        "kept": len(convs),
        "dropped": dropped,
    }
    info["seconds"] = round(time.monotonic() - t0, 1)
    (out / f"distilled-{n}-{max_new_tokens}.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info))
    return path


def shorten(convs: list[Conversation], tok: Any, max_tokens: int) -> list[Conversation]:
    """The same greedy answers as a distillation with a ``max_tokens`` limit would give (greedy decoding:
    its first tokens are the longer answer's first tokens), cut back to the last full sentence."""
    from tunegate.conversation import Conversation, Message
    from worker.evaluation.self_answers import tidy

    out: list[Conversation] = []
    for c in convs:
        ids = tok(c.messages[-1].content, add_special_tokens=False)["input_ids"]
        if len(ids) < max_tokens - 1:
            out.append(c)
            continue
        text = tidy(tok.decode(ids[:max_tokens], skip_special_tokens=True), True)
        if text:
            out.append(Conversation((*c.messages[:-1], Message("assistant", text))))
    return out


def parse_sets(pairs: list[str]) -> JsonObject:
    """``--set KEY=VALUE`` overrides of ``AlignConfig``: each value as JSON, else as the string it is."""
    out: JsonObject = {}
    for p in pairs:
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def build(out: Path, name: str, sets: JsonObject, distilled_file: Path) -> JsonObject:
    """The variant's ``result.json`` (built and measured, or as a previous build wrote it)."""
    from tunegate.conversation import load_examples
    from tunegate.schema import jsonable, read
    from tunegate.settings import EMBEDDED_BASE, get_settings
    from worker.ml.models import load_tokenizer, resolve_model
    from worker.ml.stage_io import StageIO
    from worker.prepare.align import AlignConfig, AlignInputs, distill_prompts, run

    vdir = out / name
    result_file = vdir / "result.json"
    if result_file.is_file():
        return _object(json.loads(result_file.read_text()), result_file)
    settings = get_settings()
    # the overrides read as the config's fields (a key it does not have, a value of the wrong type: refused)
    unknown = sorted(set(sets) - {f.name for f in fields(AlignConfig)})
    if unknown:
        raise SystemExit(f"--set: AlignConfig has no {', '.join(unknown)}")
    cfg = read(AlignConfig, {**asdict(AlignConfig(precision=settings.precision)), **sets}, "--set")
    tok = load_tokenizer(resolve_model(EMBEDDED_BASE, settings).path)
    wanted = set(distill_prompts(cfg.n_distill, cfg.seed))
    pool = [c for c in load_examples(distilled_file) if c.messages[0].content in wanted]
    distilled = shorten(pool, tok, cfg.distill_max_new_tokens)
    model_dir = vdir / "model"
    if not (model_dir / "config.json").is_file():
        t0 = time.monotonic()
        res = run(cfg, AlignInputs(StageIO(vdir / "work", stage="align"), model_dir, settings, distilled))
        trained = {"train_seconds": round(time.monotonic() - t0, 1), "train": res.train.to_dict()}
        (vdir / "build.json").write_text(json.dumps(trained, indent=2))
    build_info = _object(json.loads((vdir / "build.json").read_text()), vdir / "build.json")
    measured = measure(str(model_dir))
    row: JsonObject = {
        "name": name,
        "overrides": sets,
        "config": asdict(cfg),
        "n_distilled": len(distilled),
        **build_info,
        **measured.to_dict(),
        "machine": jsonable(machine_info()),
    }
    result_file.write_text(json.dumps(row, indent=2))
    return row


def _object(data: object, path: Path) -> JsonObject:
    """A JSON object read from ``path`` (refused, naming it, when the file holds something else)."""
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


@dataclass(frozen=True)
class Measured:
    """A variant's four goals: keyword ASR on AdvBench, XSTest's safe prompts refused (None: not measured),
    GSM8K answer loss, and how long measuring took."""

    asr: float
    over_refusal: float | None
    gsm8k_loss: float
    measure_seconds: float

    def to_dict(self) -> JsonObject:
        from tunegate.schema import write

        return write(self)


def measure(model: str) -> Measured:
    from gsm8k_data import gsm8k_conversations
    from gsm8k_loss import mean_loss

    from tunegate.settings import get_settings
    from worker.evaluation.prompts import load_prompts
    from worker.evaluation.single import SingleEval, evaluate_prompts
    from worker.stages.evaluate import EvalConfig, make_judge

    harmful = load_prompts(DATA / "advbench" / "harmful_behaviors.csv")[:100]
    safe = load_prompts(DATA / "xstest" / "xstest_prompts.csv", safe_only=True)
    cfg = SingleEval(model=model, template="chat", max_new_tokens=64, second_judge="none")
    t0 = time.monotonic()
    judge = make_judge(EvalConfig(model="-", judge="keyword"), get_settings())
    res = evaluate_prompts(cfg, harmful, safe, judge)
    convs = gsm8k_conversations(50, split="test")
    loss = mean_loss(model, convs)
    return Measured(
        asr=res.harmful.asr,
        over_refusal=res.over_refusal.refusal_rate if res.over_refusal is not None else None,
        gsm8k_loss=round(loss, 4),
        measure_seconds=round(time.monotonic() - t0, 1),
    )


def table(out: Path) -> None:
    rows = [_object(json.loads(p.read_text()), p) for p in sorted(out.glob("*/result.json"))]
    print(
        "| variant | overrides | distilled | steps | tokens | train s | ASR | XSTest refused | GSM8K loss |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["train"]  # the align stage's training result
        if not isinstance(t, Mapping):
            raise ValueError(f"variant {r['name']}'s train must be a JSON object, got {t!r}")
        print(
            f"| {r['name']} | {r['overrides']} | {r['n_distilled']} | {t.get('steps')} | "
            f"{t.get('trained_tokens')} | {r['train_seconds']} | {r['asr']} | {r['over_refusal']} | "
            f"{r['gsm8k_loss']} |"
        )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["distil", "build", "table", "measure"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=240)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--name", default="")
    ap.add_argument("--model", default="")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "table":
        table(args.out)
        return
    print_machine()
    if args.command == "distil":
        distil(args.out, args.n, args.max_new_tokens)
    elif args.command == "measure":
        print(json.dumps(measure(args.model).to_dict(), indent=2))
    else:
        path = distil(args.out, args.n, args.max_new_tokens)
        print(json.dumps(build(args.out, args.name, parse_sets(args.set), path), indent=2, default=str))


if __name__ == "__main__":
    main()
