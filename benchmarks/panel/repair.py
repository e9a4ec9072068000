"""The post-training repair experiment (``worker/training/repair_io.py``) on finished panel arms: each
variant repairs the arm's trained adapter, then the real evaluate stage (same config as the arm's, the base's
results from the cache) and the gate's pure ``decide`` (the arm's gate config) judge it, and the held-out task
loss is measured. One row per (job, arm, variant): ``<results>/<job>/<arm>/repair-<variant>.json``;
resumable (a variant with a row is skipped); the report shows the rows beside their unrepaired arm.

    python -m benchmarks.panel.repair --out DIR --jobs control_gsm8k,control_json [--arm on] \
        [--variants restore:0.5,project:0.35] [--model smollm2-135m-aligned]

Variants: ``restore:ALPHA`` (add ALPHA x the alignment difference back, after RESTA) and
``project:THRESHOLD`` (after Safe LoRA: project the layers whose update lies outside the alignment
subspace).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.panel import datasets as ds
from benchmarks.panel import taskloss
from benchmarks.panel.job import StageResults, arm_dir, record_text, summarize
from benchmarks.panel.manifest import PANEL, by_name
from benchmarks.panel.records import RepairOutcome, RepairRow, TaskLoss

if TYPE_CHECKING:
    from worker.training.repair_io import RepairConfig


def variant_config(spec: str) -> RepairConfig:
    """``restore:0.5`` -> RepairConfig("restore", alpha=0.5); ``project:0.35`` -> threshold 0.35."""
    from worker.training.repair_io import RepairConfig

    method, _, value = spec.partition(":")
    if method == "restore":
        return RepairConfig("restore", alpha=float(value or 0.5))
    if method == "project":
        return RepairConfig("project", threshold=float(value or 0.35))
    raise SystemExit(f"unknown repair variant {spec!r} (restore:ALPHA or project:THRESHOLD)")


def work_dir(out: Path, job: str, arm: str, variant: str) -> Path:
    """Where a variant's repaired adapter and evaluation go; its row is this path + ``.json``."""
    return arm_dir(out, job, arm) / f"repair-{variant.replace(':', '-')}"


def row_path(out: Path, job: str, arm: str, variant: str) -> Path:
    w = work_dir(out, job, arm, variant)
    return w.with_name(w.name + ".json")  # not with_suffix: "0.5" would lose its ".5"


def run_variant(out: Path, job_name: str, arm: str, variant: str, model: str) -> RepairRow:
    from tunegate.artifacts import load_config
    from tunegate.conversation import load_examples
    from tunegate.settings import get_settings
    from worker.ml.models import resolve_model
    from worker.ml.stage_io import StageIO
    from worker.stages import evaluate, gate, mitigate, score, train
    from worker.training.repair_io import alignment_reference, repair_adapter

    start = time.monotonic()
    settings = get_settings()
    job = by_name([job_name], PANEL)[0]
    d = arm_dir(out, job_name, arm)
    work = work_dir(out, job_name, arm, variant)
    aligned = resolve_model(model, settings).path
    reference = alignment_reference(aligned)
    if reference is None:
        raise SystemExit(
            f"{aligned} records no unaligned model (tunegate_source.json): nothing to repair from"
        )
    trained = train.TrainResult.load(d / "train")
    rep = repair_adapter(
        Path(trained.adapter_dir), aligned, reference, work / "adapter", variant_config(variant)
    )
    ecfg = load_config(evaluate.EvalConfig, d / "evaluate")
    scored = score.ScoreResult.load(d / "score")
    data = out / job_name / "data"
    inputs = evaluate.EvalInputs(
        work / "adapter",
        load_examples(data / "train.jsonl"),
        StageIO(work / "evaluate", stage="evaluate"),
        settings,
        settings.eval_cache_path,
        scored.records,
    )
    ev = evaluate.run(ecfg, inputs)
    mit = mitigate.MitigateResult.load(d / "mitigate")
    gcfg = load_config(gate.GateConfig, d / "gate")
    dec = gate.decide(gcfg, ev, scored.verdict, gate.mitigation_active(mit))
    decided = gate.GateResult(dec.released, dec.code, dec.message, dec.checks, warnings=dec.warnings)
    labels = ds.read_labels(data).attack
    by = StageResults(score=scored, mitigate=mit, train=trained, evaluate=ev, gate=decided)
    done = rep.to_dict()
    return RepairRow(
        summary=summarize(job, arm, by, list(labels)),
        variant=variant,
        repair=RepairOutcome(done["method"], done["reference"], done["n_layers"], done["n_changed"]),
        task_loss=TaskLoss(
            **taskloss.base_and_tuned(model, work / "adapter", data / "heldout.jsonl", settings)
        ),
        wall_s=round(time.monotonic() - start, 1),
    )


def main(argv: list[str] | None = None) -> int:
    from tunegate.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--arm", default="on")
    ap.add_argument("--variants", default="restore:0.5,project:0.35")
    ap.add_argument("--model", default="")
    a = ap.parse_args(argv)
    model = a.model or get_settings().default_model
    for job in a.jobs.split(","):
        for variant in a.variants.split(","):
            path = row_path(a.out, job, a.arm, variant)
            if path.is_file():
                continue
            row = run_variant(a.out, job, a.arm, variant, model)
            path.write_text(record_text(row.to_dict()), encoding="utf-8")
            print(
                f"{job}/{a.arm} {variant}: released={row.summary.released} code={row.summary.code}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
