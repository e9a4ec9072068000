"""The post-training repair experiment on finished panel arms, through the pipeline's own repair stage
(``worker/stages/repair.py``): each variant is a one-rung ladder. The arm's finished stages (validate to
evaluate) are linked into ``<results>/<job>/<arm>/repair-<variant>/``, and the runner (``run_local``) runs the
stages left there, repair and gate, under the arm's policy with ``repair_on`` "always" and the repair stage
overridden to try that one variant (evaluated whatever its task loss, up to the stage's own bound). So the
repaired adapter is evaluated and judged exactly as a job's is; the row holds that evaluation and the gate's
decision on it, what the repair changed and the held-out task loss. One row per (job, arm, variant):
``<results>/<job>/<arm>/repair-<variant>.json``; resumable (a variant with a row is skipped, and the runner
reuses a stage whose result exists); the report shows the rows beside their unrepaired arm.

The stage repairs only what the gate would block for erosion, so a variant on an arm released as trained is
recorded as not tried (the stage's reason in the row's decision message, no repair and no task loss).

    python -m benchmarks.panel.repair --out DIR --jobs control_gsm8k,control_json [--arm on] \\
        [--variants restore:0.5,project:0.35] [--model smollm2-135m-aligned]

Variants: the stage's ladder entries, ``restore:ALPHA`` (add ALPHA x the alignment difference back, after
RESTA), ``merge:THRESHOLD`` (SafeMERGE) and ``project:THRESHOLD`` (Safe LoRA).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.panel import datasets as ds
from benchmarks.panel import taskloss
from benchmarks.panel.job import (
    StageResults,
    arm_dir,
    arm_job,
    record_text,
    reuse_stages,
    summarize,
    variant,
)
from benchmarks.panel.manifest import PANEL, by_name
from benchmarks.panel.records import ArmSummary, Decision, RepairOutcome, RepairRow, TaskLoss, Variant

if TYPE_CHECKING:
    from worker.stages.repair import AdapterCheck

# the stages a variant takes from its arm as they are; the rest (repair, gate) run again in its directory
FINISHED = ("validate", "score", "mitigate", "train", "evaluate")
# the repair stage's evaluation budget and task-loss bound for one variant: its evaluation is measured
# whatever its task loss (up to the stage's own upper bound, 10x the trained adapter's)
EXPERIMENT = {"max_evaluations": 1, "max_task_loss_increase": 10.0}


def check_variant(spec: str) -> str:
    """``spec`` when the repair stage's ladder takes it, else exits naming it."""
    from tunegate.errors import InvalidConfig
    from worker.stages.repair import variant_config

    try:
        variant_config(spec)
    except InvalidConfig as exc:
        raise SystemExit(f"unknown repair variant {spec!r}: {exc}") from exc
    return spec


def experiment(spec: str) -> Variant:
    """The variant as the policy knob and stage override the pipeline runs it with."""
    return Variant({"repair_on": "always"}, {"repair": {**EXPERIMENT, "ladder": [spec]}})


def work_dir(out: Path, job: str, arm: str, variant: str) -> Path:
    """Where a variant's stages, repaired adapter and evaluation go; its row is this path + ``.json``."""
    return arm_dir(out, job, arm) / f"repair-{variant.replace(':', '-')}"


def row_path(out: Path, job: str, arm: str, variant: str) -> Path:
    w = work_dir(out, job, arm, variant)
    return w.with_name(w.name + ".json")  # not with_suffix: "0.5" would lose its ".5"


def link_finished(arm: Path, work: Path) -> None:
    """The arm's finished stages into ``work`` as hard links (``job.reuse_stages``); refused, naming the
    stage, when the arm has not finished one."""
    from worker.stages.base import result_exists

    missing = next((stage for stage in FINISHED if not result_exists(arm / stage)), None)
    if missing is not None:
        raise SystemExit(f"{arm} has no finished {missing} stage: run the arm first (benchmarks.panel.run)")
    reuse_stages(arm, work, FINISHED, link=True)


def run_variant(out: Path, job_name: str, arm: str, spec: str, model: str) -> RepairRow:
    from tunegate.settings import get_settings
    from worker.runner import run_local

    start = time.monotonic()
    job = by_name([job_name], PANEL)[0]
    data = out / job_name / "data"
    work = work_dir(out, job_name, arm, spec)
    link_finished(arm_dir(out, job_name, arm), work)
    view, settings = arm_job(job, arm, variant(out), model, data / "train.jsonl", experiment(spec))
    by = StageResults.of(run_local(view, work, settings))
    if by.repair is None:
        raise RuntimeError(f"{work}: the pipeline ran no repair stage")
    tried = by.repair.attempts[0] if by.repair.attempts else None
    summary = summarize(job, arm, dataclasses.replace(by, repair=None), list(ds.read_labels(data).attack))
    if tried is None:  # the stage did not try it (the gate releases the adapter as trained, ...): say why
        summary = dataclasses.replace(
            summary, decision=dataclasses.replace(summary.decision, message=by.repair.reason)
        )
        return RepairRow(summary=summary, variant=spec, repair=None, task_loss=None, wall_s=_since(start))
    return RepairRow(
        summary=judged(summary, tried),
        variant=spec,
        repair=outcome(tried, model),
        task_loss=TaskLoss(
            **taskloss.base_and_tuned(model, Path(tried.adapter_dir), data / "heldout.jsonl", get_settings())
        ),
        wall_s=_since(start),
    )


def judged(summary: ArmSummary, tried: AdapterCheck) -> ArmSummary:
    """The arm's summary with the repaired adapter's evaluation and the gate's decision on it (the trained
    adapter's, with the stage's reason, when its task loss kept it from being evaluated)."""
    from worker.stages.evaluate import EvalResult

    if not tried.evaluated:
        return dataclasses.replace(
            summary,
            decision=Decision(False, None, f"not evaluated: {tried.why}"),
            templates={},
            over_refusal=None,
            probes=None,
        )
    ev = EvalResult.load(Path(tried.evaluation_dir))
    return dataclasses.replace(
        summary,
        templates=dict(ev.templates),
        over_refusal=ev.over_refusal,
        probes=tuple(ev.probes),
        decision=Decision(tried.released, tried.code, tried.message),
    )


def outcome(tried: AdapterCheck, model: str) -> RepairOutcome:
    """What the repair changed, as the experiment's rows have recorded it."""
    from worker.ml.models import resolve_model
    from worker.training.repair_io import alignment_reference

    reference = alignment_reference(resolve_model(model).path)
    method = tried.variant.partition(":")[0]
    return RepairOutcome(method, str(reference or ""), tried.n_layers, tried.n_changed)


def _since(start: float) -> float:
    return round(time.monotonic() - start, 1)


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
    variants = [check_variant(v) for v in a.variants.split(",")]
    for job in a.jobs.split(","):
        for spec in variants:
            path = row_path(a.out, job, a.arm, spec)
            if path.is_file():
                continue
            row = run_variant(a.out, job, a.arm, spec, model)
            path.write_text(record_text(row.to_dict()), encoding="utf-8")
            print(
                f"{job}/{a.arm} {spec}: released={row.summary.released} code={row.summary.code}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
