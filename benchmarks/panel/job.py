"""One (job, arm) of the panel through the real stages (``worker.runner.run_local``, the service's specs),
then its row: ``<results>/<job>/<arm>/panel.json``.

Arms: ``off`` = policy mitigation "none" and no injected safety examples (``block_unsafe_data`` stays the
provider's default: the gate's decision is recorded); ``on`` = the provider's defaults. Stages resume from
``<results>/<job>/<arm>/<stage>/`` (the runner's own rule); a finished arm (a row without an error) is
skipped by ``run.py``.

    python -m benchmarks.panel.job --out DIR --job NAME --arm off|on [--model M] [--pool-size N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Self

from benchmarks.panel import attacker, taskloss
from benchmarks.panel import datasets as ds
from benchmarks.panel.manifest import PANEL, PanelJob, by_name, smoke_jobs
from benchmarks.panel.records import (
    SCORE_KEYS,
    ArmSummary,
    Decision,
    FailedRow,
    PanelRow,
    Row,
    ScoreRow,
    StageRepair,
    TaskLoss,
    TrainCounts,
    Variant,
    load_row,
)
from tunegate import schema
from tunegate.jsontypes import JsonObject
from tunegate.records import ScoreRecord
from tunegate.report import ReportMitigation, ReportRepair

if TYPE_CHECKING:
    from machine import MachineInfo

    from tunegate.errors import UnsafeTrainingData
    from tunegate.settings import Settings
    from worker.job_view import JobView
    from worker.ml.stage_io import ProgressFn
    from worker.stages.base import StageResult
    from worker.stages.evaluate import EvalResult
    from worker.stages.gate import GateResult
    from worker.stages.mitigate import MitigateResult
    from worker.stages.repair import RepairResult
    from worker.stages.score import ScoreResult
    from worker.stages.train import TrainResult

__all__ = ["SCORE_KEYS"]  # re-exported: the row's score keys (benchmarks.panel.records)

ARMS: dict[str, dict[str, str | bool]] = {
    "off": {"mitigation": "none", "inject_safety_examples": False},
    "on": {},
}
ROW = "panel.json"


def arm_dir(out: Path, job: str, arm: str) -> Path:
    return out / job / arm


def read_row(out: Path, job: str, arm: str) -> Row | None:
    """The arm's stored row (None: not run yet)."""
    p = arm_dir(out, job, arm) / ROW
    return read_record(p) if p.is_file() else None


def read_record(path: Path) -> Row:
    """A stored ``panel.json`` (a key this version does not know is refused, naming it)."""
    return load_row(json.loads(path.read_text(encoding="utf-8")))


def record_text(record: JsonObject, default: Callable[[object], object] | None = None) -> str:
    """A stored record (a row's, a repair row's or the run record's ``to_dict()``) as the panel writes it:
    compact JSON with one top-level key a line, so ``json.loads`` and ``jq`` read it and a rerun's diff names
    the keys that changed. ``default`` as ``json.dumps``'s."""
    if not record:
        return "{}\n"
    items = [
        f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), default=default)}" for k, v in record.items()
    ]
    return "{\n" + ",\n".join(items) + "\n}\n"


def write_row(out: Path, job: str, arm: str, row: Row) -> None:
    d = arm_dir(out, job, arm)
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / f"{ROW}.tmp"
    tmp.write_text(record_text(row.to_dict(), default=str), encoding="utf-8")
    tmp.replace(d / ROW)


def sources(out: Path, model: str, data_dir: Path, pool_size: int) -> ds.Sources:
    """The builders' sources; the selection attacks read the attacker's pool scores (cached in ``out``)."""
    base = ds.Sources(data_dir=data_dir, pool_size=pool_size)

    def selected(key: str, n: int) -> list[int]:
        cache = out / "_attacker" / f"{Path(model).name}-pool{pool_size}"
        return attacker.top(attacker.pool_scores(base, model, cache), key, n)

    return ds.Sources(data_dir=data_dir, pool_size=pool_size, selected=selected)


SCREEN = (
    "validate",
    "score",
)  # stages whose configs no arm knob reaches (tests/benchmarks/panel/test_job.py)


def share_screen(out: Path, job: str, arm: str) -> str | None:
    """Copy the other arm's finished validate and score outputs into this arm (they read the same file with
    the same configs: the arms differ only in mitigation knobs), so the runner reuses them instead of scoring
    twice; returns the arm copied from."""
    from worker.stages.base import result_exists

    for other in ARMS:
        src = arm_dir(out, job, other)
        if other == arm or not all(result_exists(src / stage) for stage in SCREEN):
            continue
        reuse_stages(src, arm_dir(out, job, arm), SCREEN)
        return other
    return None


def reuse_stages(src: Path, dst: Path, stages: Iterable[str], *, link: bool = False) -> None:
    """Each finished stage output of ``src`` into ``dst`` (one already finished there is kept; an unfinished
    one is replaced), copied, or with ``link`` hard-linked (stage outputs are written once, by rename, so a
    link never sees a change)."""
    from worker.stages.base import result_exists

    for stage in stages:
        if not result_exists(dst / stage):
            shutil.rmtree(dst / stage, ignore_errors=True)
            shutil.copytree(src / stage, dst / stage, copy_function=os.link if link else shutil.copy2)


def build_data(job: PanelJob, src: ds.Sources, out: Path) -> tuple[Path, Path, list[bool]]:
    """The job's data, written once into ``<results>/<job>/data`` (both arms train on the same file)."""
    d = out / job.name / "data"
    if not (d / "labels.json").is_file():
        ds.write_built(job.builder(src, job.n), d)
    return d / "train.jsonl", d / "heldout.jsonl", list(ds.read_labels(d).attack)


@dataclass(frozen=True)
class StageResults:
    """The results of an arm's stages (those that ran)."""

    score: ScoreResult
    mitigate: MitigateResult
    train: TrainResult | None = None
    evaluate: EvalResult | None = None
    repair: RepairResult | None = None
    gate: GateResult | None = None

    @classmethod
    def of(cls, results: Iterable[StageResult]) -> Self:
        from worker.stages.evaluate import EvalResult
        from worker.stages.gate import GateResult
        from worker.stages.mitigate import MitigateResult
        from worker.stages.repair import RepairResult
        from worker.stages.score import ScoreResult
        from worker.stages.train import TrainResult

        by = {type(r): r for r in results}
        score, mitigate = by.get(ScoreResult), by.get(MitigateResult)
        if not isinstance(score, ScoreResult) or not isinstance(mitigate, MitigateResult):
            raise ValueError("an arm's row needs its score and mitigate results")
        train, ev, rep, gate = (by.get(k) for k in (TrainResult, EvalResult, RepairResult, GateResult))
        return cls(
            score,
            mitigate,
            train if isinstance(train, TrainResult) else None,
            ev if isinstance(ev, EvalResult) else None,
            rep if isinstance(rep, RepairResult) else None,
            gate if isinstance(gate, GateResult) else None,
        )


def run_arm(job: PanelJob, arm: str, out: Path, model: str, src: ds.Sources) -> PanelRow:
    """Run the stages of one arm (resuming), compute the held-out task loss; return the row."""
    start = time.monotonic()
    train_file, heldout, attack = build_data(job, src, out)  # before the heavy imports: fails fast

    from tunegate.errors import UnsafeTrainingData
    from worker.runner import run_local
    from worker.stages.all import PIPELINE
    from worker.stages.base import result_exists

    var = variant(out)
    view, settings = arm_job(job, arm, var, model, train_file)
    stamps: list[tuple[str, float]] = []

    def progress_for(name: str) -> ProgressFn:
        stamps.append((name, time.monotonic()))
        return lambda *a, **k: None

    d = arm_dir(out, job.name, arm)
    shared = share_screen(out, job.name, arm)
    try:
        results = run_local(view, d, settings, progress_for=progress_for)
        refusal = None
    except UnsafeTrainingData as exc:  # mitigation refused a mostly flagged file before training: a decision
        refusal = exc
        results = [spec.result.load(d / spec.name) for spec in PIPELINE.specs if result_exists(d / spec.name)]
    ends = [t for _, t in stamps[1:]] + [time.monotonic()]
    stage_s = {name: round(e - t, 1) for (name, t), e in zip(stamps, ends, strict=True)}
    by = StageResults.of(results)
    loss_file = d / "task_loss.json"
    if not loss_file.is_file() and by.train is not None:
        loss = taskloss.base_and_tuned(model, released_adapter(by), heldout, settings)
        loss_file.write_text(json.dumps(loss), encoding="utf-8")
    return PanelRow(
        summary=summarize(job, arm, by, attack, refusal),
        task_loss=schema.read(TaskLoss, json.loads(loss_file.read_text(encoding="utf-8")), str(loss_file))
        if loss_file.is_file()
        else None,
        stage_s=stage_s,
        wall_s=round(time.monotonic() - start, 1),
        screen_from=shared,
        variant=var,
        model=model,
        base=_fingerprint(model),  # the weights measured (run.check_base)
        machine=_machine(),
    )


def arm_job(
    job: PanelJob, arm: str, var: Variant, model: str, train_file: Path, extra: Variant | None = None
) -> tuple[JobView, Settings]:
    """The job one arm runs and the settings it runs under: the arm's policy knobs, then the results
    directory's variant (``var``) and ``extra``'s (the repair experiment's), each added to the provider's."""
    from models.policy import org_policy
    from models.records import Hyperparameters
    from tunegate.settings import get_settings
    from worker.job_view import local_view

    settings = get_settings()
    layers = [v for v in (var, extra) if v is not None]
    merged = {**settings.stage_overrides}
    for layer in layers:
        for stage, knobs in layer.stage_overrides.items():
            merged[stage] = {**merged.get(stage, {}), **knobs}
    if merged != settings.stage_overrides:
        settings = settings.model_copy(update={"stage_overrides": merged})
    hp: Hyperparameters = {"n_epochs": job.epochs} if job.epochs else {}
    arm_policy: JsonObject = dict(ARMS[arm])
    for layer in layers:
        arm_policy.update(layer.policy)
    policy = org_policy(settings, arm_policy)
    return local_view(train_file, model, policy=policy, hyperparameters=hp), settings


VARIANT = "variant.json"


def variant(out: Path) -> Variant:
    """The results directory's variant (``run --variant``): policy knobs added to both arms' and stage
    overrides added to the provider's, for measuring a method against the defaults' rows; empty by default."""
    f = out / VARIANT
    return Variant.from_dict(json.loads(f.read_text(encoding="utf-8"))) if f.is_file() else Variant()


def repaired(by: StageResults) -> RepairResult | None:
    """The repair stage's result when it repaired the adapter (the gate then judged the repaired one), else
    None."""
    rep = by.repair
    return rep if rep is not None and rep.repaired else None


def released_adapter(by: StageResults) -> Path:
    """The adapter the gate judged: the repaired one when a repair passed, else the trained one."""
    rep = repaired(by)
    if rep is not None:
        return Path(rep.adapter_dir)
    if by.train is None:
        raise ValueError("the arm did not train: there is no adapter")
    return Path(by.train.adapter_dir)


def score_row(r: ScoreRecord, attack: bool) -> ScoreRow:
    """A score record as the arm's row keeps it (``SCORE_KEYS``), with whether it is an attack example."""
    return ScoreRow({**r.scores(), "risk": r.risk}, attack)


def summarize(
    job: PanelJob, arm: str, by: StageResults, attack: list[bool], refusal: UnsafeTrainingData | None = None
) -> ArmSummary:
    """The arm's summary; ``refusal`` (an ``UnsafeTrainingData``): the job ended before training, so there
    is no training, evaluation or gate result and the decision is the refusal."""
    score, ev, gate, train = by.score, by.evaluate, by.gate, by.train
    rep = repaired(by)
    if rep is not None:  # the row reports what the gate judged: the repaired adapter's evaluation
        from worker.stages.evaluate import EvalResult

        ev = EvalResult.load(Path(rep.evaluation_dir))
    if gate is not None:
        decision = Decision(bool(gate.released), gate.code, gate.message)
    else:
        decision = Decision(False, getattr(refusal, "code", None), str(refusal or ""))
    return ArmSummary(
        job=job.name,
        arm=arm,
        kind=job.kind,
        expected=job.expected,
        reference=job.reference,
        n_examples=len(attack),
        scores=tuple(score_row(r, a) for r, a in zip(score.records, attack, strict=True)),
        flagged=bool(score.verdict.flagged),
        flag_reason=score.verdict.reason,
        templates=dict(ev.templates) if ev is not None else {},
        over_refusal=ev.over_refusal if ev is not None else None,
        probes=tuple(ev.probes) if ev is not None else None,
        decision=decision,
        train=None
        if train is None
        else TrainCounts(
            trained_tokens=train.trained_tokens,
            steps=train.steps,
            epochs=train.epochs,
            resumed_from_epoch=train.resumed_from_epoch,
            n_examples=train.n_examples,
            n_anchors=train.n_anchors,
        ),
        repair=_repair_row(by.repair),
        # without the inferred user ``format``: rows never held it
        mitigate=dataclasses.replace(ReportMitigation.from_dict(by.mitigate.to_dict()), format=None),
    )


def _repair_row(rep: RepairResult | None) -> StageRepair | None:
    """What the repair stage did (None when it did not run): the job's summary and every adapter checked."""
    if rep is None:
        return None
    s = rep.summary()
    checks = ReportRepair.from_dict(rep.to_dict())  # the adapters checked, as the safety report reads them
    return StageRepair(
        repaired=s["repaired"],
        method=s["method"],
        tried=tuple(s["tried"]),
        reason=s["reason"],
        needed=rep.needed,
        checks=tuple(c for c in (checks.original, *checks.attempts) if c is not None),
    )


def run_one(job: PanelJob, arm: str, out: Path, model: str, data_dir: Path, pool_size: int) -> Row:
    """The arm's row (stored); an exception is recorded in the row (``error``) instead of propagating."""
    start = time.monotonic()
    row: Row
    try:
        row = run_arm(job, arm, out, model, sources(out, model, data_dir, pool_size))
    except Exception as exc:  # one job's crash must not stop the panel: its row says what happened
        row = FailedRow(
            job=job.name,
            arm=arm,
            kind=job.kind,
            expected=job.expected,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=8),
            wall_s=round(time.monotonic() - start, 1),
            model=model,
            base=_fingerprint(model),
            machine=_machine(),
        )
    write_row(out, job.name, arm, row)
    return row


def _machine() -> MachineInfo:
    """Where the row was measured: CPU, kernels, the precision training picked, versions, commit."""
    if TYPE_CHECKING:  # mypy checks benchmarks/machine.py as `machine` (pyproject.toml, [tool.mypy])
        from machine import machine_info
    else:
        from benchmarks.machine import machine_info

    return machine_info()


def _fingerprint(model: str) -> str | None:
    """The base's fingerprint; None when the name does not resolve here (the row then holds that error)."""
    from tunegate.errors import ModelError
    from worker.ml.models import resolve_model

    try:
        return resolve_model(model).fingerprint
    except ModelError:
        return None


def main(argv: list[str] | None = None) -> int:
    from tunegate.settings import get_settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--job", required=True)
    ap.add_argument("--arm", choices=sorted(ARMS), required=True)
    ap.add_argument("--model", default="", help="base model (default: the configured default)")
    ap.add_argument("--data", type=Path, default=ds.SHARED_DATA)
    ap.add_argument("--pool-size", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true")
    a = ap.parse_args(argv)
    job = by_name([a.job], smoke_jobs() if a.smoke else PANEL)[0]
    row = run_one(job, a.arm, a.out, a.model or get_settings().default_model, a.data, a.pool_size)
    return 1 if isinstance(row, FailedRow) else 0


if __name__ == "__main__":
    raise SystemExit(main())
