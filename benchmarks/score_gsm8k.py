"""Real-data check: score GSM8K training examples with the embedded model; compare top-100 with random-100.

    python benchmarks/score_gsm8k.py run --n 2000 --out /tmp/gsm8k.scores.jsonl     # appends in chunks
    python benchmarks/score_gsm8k.py analyze /tmp/gsm8k.scores.jsonl

``run`` writes records chunk by chunk (resuming after the last line already written), so a long run on a
small CPU can be stopped and its partial results analysed. Data is read by path, never copied.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from gsm8k_data import gsm8k_conversations
from machine import print_machine

from tunegate.records import ScoreRecord
from tunegate.scorers import SCORERS


@dataclass(frozen=True)
class Row:
    """One line of the output: a score record and the response it scored (the key ``response``)."""

    record: ScoreRecord
    response: str


def read_rows(path: Path) -> list[Row]:
    rows = []
    for line in path.open():
        data = json.loads(line)
        response = data.pop("response")
        rows.append(Row(ScoreRecord.from_dict(data), response))
    return rows


def run(n: int, out: Path, model: str, batch_size: int, chunk: int) -> None:
    from tunegate.settings import get_settings
    from worker.scoring.report import FlagRules, make_record
    from worker.scoring.score_all import encode_all, load_base, prepare_engine

    convs = gsm8k_conversations(n)
    done = sum(1 for _ in out.open()) if out.exists() else 0
    base = load_base(model, get_settings())
    t0 = time.time()
    engine, reference = prepare_engine(base, SCORERS, batch_size)
    print(f"anchors+reference ready in {time.time() - t0:.0f}s; resuming at {done}", flush=True)
    for start in range(done, len(convs), chunk):
        part = convs[start : start + chunk]
        t = time.time()
        raw = engine.score(encode_all(base.tokenizer, part, base.max_len))
        with out.open("a") as fh:
            for r, c in zip(raw, part, strict=True):
                rec = make_record(r, c, reference, FlagRules())
                fh.write(json.dumps({**rec.to_dict(), "response": c.trained_responses[0]}) + "\n")
        print(f"{start + len(part)}/{len(convs)} ({len(part) / (time.time() - t):.2f} ex/s)", flush=True)


def _describe(rows: list[Row]) -> dict[str, float]:
    f = [r.record.features for r in rows]
    recs = [r.record for r in rows]
    return {
        "median_tokens": statistics.median(x.response_tokens for x in f),
        "mean_tokens": round(statistics.fmean(x.response_tokens for x in f), 1),
        "median_chars": statistics.median(x.response_chars for x in f),
        "share_numbered_list": sum(x.numbered_list for x in f) / len(f),
        "share_math": sum(x.math for x in f) / len(f),
        "share_code": sum(x.code for x in f) / len(f),
        "lines_per_answer": round(statistics.fmean(r.response.count("\n") + 1 for r in rows), 2),
        "calc_annotations": round(statistics.fmean(r.response.count("<<") for r in rows), 2),
        "share_money": sum("$" in r.response for r in rows) / len(rows),
        "share_decimal_or_percent": sum(bool(re.search(r"\d\.\d|%", r.response)) for r in rows) / len(rows),
        "median_prompt_tokens": statistics.median(r.n_tokens - r.n_response_tokens for r in recs),
        "median_selfinf": round(statistics.median(r.scored("selfinf") for r in recs), 3),
        "median_gradient": round(statistics.median(r.scored("gradient") for r in recs), 4),
        "median_representation": round(statistics.median(r.scored("representation") for r in recs), 4),
    }


def analyze(path: Path, k: int, reference_file: Path | None = None) -> None:
    from worker.scoring.math import spearman

    rows = read_rows(path)
    recs = [r.record for r in rows]
    print(f"{len(rows)} scored examples")
    scorers = ["representation", "representation_diff", "gradient", "selfinf"]
    for i, a in enumerate(scorers):
        for b in scorers[i + 1 :]:
            rho = spearman([r.scored(a) for r in recs], [r.scored(b) for r in recs])
            print(f"spearman {a} ~ {b}: {rho:.3f}")
    tokens = [r.n_response_tokens for r in recs]
    print(
        "spearman selfinf ~ response tokens:", round(spearman([r.scored("selfinf") for r in recs], tokens), 3)
    )
    print(
        "spearman gradient ~ response tokens:",
        round(spearman([r.scored("gradient") for r in recs], tokens), 3),
    )
    rand = random.Random(0).sample(rows, min(k, len(rows)))
    print("random:", _describe(rand))
    for s in ("representation", "gradient", "selfinf"):
        top = sorted(rows, key=lambda r: -r.record.scored(s))[:k]
        print(f"top-{k} {s}:", _describe(top))
        print("   e.g.", json.dumps(top[0].response[:200]), "|", json.dumps(top[1].response[:200]))
    ranked = sorted(rows, key=lambda r: -r.record.risk)[:k]
    print(f"top-{k} risk:", _describe(ranked))
    above = {
        s: sum(r.percentiles[s] >= 99 for r in recs) / len(recs)
        for s in ("representation", "gradient", "selfinf")
    }
    print("share at/above reference p99:", above)
    from tunegate.conversation import Conversation, Message
    from worker.scoring.report import FlagRules, summarize

    convs = [
        Conversation((Message("user", "q"), Message("assistant", r.response)), line=r.record.line)
        for r in rows
    ]
    found = [reference_file] if reference_file else sorted(Path(path).parent.glob("reference-*.json"))
    if not found:
        print("verdict: skipped (pass --reference <models>/<fingerprint>/scoring-cache/reference-*.json)")
        return
    ref_path = found[0]
    reference = json.loads(ref_path.read_text())["scores"]
    verdict = summarize(recs, convs, reference, FlagRules()).verdict
    print("verdict:", verdict.to_dict() if verdict is not None else None)


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--n", type=int, default=2000)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--model", default="smollm2-135m")
    r.add_argument("--batch-size", type=int, default=8)
    r.add_argument("--chunk", type=int, default=40)
    a = sub.add_parser("analyze")
    a.add_argument("path", type=Path)
    a.add_argument("--k", type=int, default=100)
    a.add_argument("--reference", type=Path, help="the cached reference-*.json of the scoring model")
    args = ap.parse_args()
    print_machine()
    if args.cmd == "run":
        run(args.n, args.out, args.model, args.batch_size, args.chunk)
    else:
        analyze(args.path, args.k, args.reference)


if __name__ == "__main__":
    main()
