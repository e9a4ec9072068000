"""The job pipeline: which stage follows which, where each writes, and how its config is built.

    validate ──> score ──> mitigate ──> train ──> evaluate ──> gate ──> succeeded | failed (blocked)

Each stage writes into ``settings.jobs_path/<job_id>/<stage>/`` and ends with ``result.json``; the
Celery layer (``worker/runner.py``) skips a stage whose result exists. Configs are built here from the job
row's snapshot (``JobView``), the effective safety policy stored on the job, and
``Settings.stage_overrides`` (a provider knob, e.g. evaluation size), so every stage gets plain paths and
conversations, never DB rows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from models.tables import File, Job, Organization
from tunegate import queue
from tunegate.errors import InvalidConfig, NotFound
from tunegate.settings import Settings
from tunegate.storage import get_storage

STAGES = ("validate", "score", "mitigate", "train", "evaluate", "gate")
TASK_OF = {
    "validate": queue.VALIDATE,
    "score": queue.SCORE,
    "mitigate": queue.MITIGATE,
    "train": queue.TRAIN,
    "evaluate": queue.EVALUATE,
    "gate": queue.GATE,
}
# Share of the job's overall progress bar each stage covers (training and evaluation dominate).
WEIGHTS = {"validate": 0.02, "score": 0.18, "mitigate": 0.02, "train": 0.48, "evaluate": 0.27, "gate": 0.03}


def next_stage(stage: str) -> str | None:
    i = STAGES.index(stage)
    return STAGES[i + 1] if i + 1 < len(STAGES) else None


def overall_progress(stage: str, fraction: float) -> float:
    """The job's 0..1 progress when ``stage`` is ``fraction`` done."""
    done = sum(WEIGHTS[s] for s in STAGES[: STAGES.index(stage)])
    return round(min(1.0, done + WEIGHTS[stage] * max(0.0, min(1.0, fraction))), 4)


def job_dir(settings: Settings, job_id: str) -> Path:
    return settings.jobs_path / job_id


def stage_dir(settings: Settings, job_id: str, stage: str) -> Path:
    return job_dir(settings, job_id) / stage


@dataclass(frozen=True)
class JobView:
    """What the stages need from a job row, read once in a short transaction."""

    id: str
    org_name: str
    model: str
    training_file: Path
    validation_file: Path | None
    hyperparameters: dict[str, Any]
    seed: int
    suffix: str | None
    safety: dict[str, Any] = field(default_factory=dict)


def _file_path(session: Session, org_id: str, file_id: str, settings: Settings) -> Path:
    row = session.get(File, file_id)
    if row is None or row.org_id != org_id or row.deleted_at is not None:
        raise NotFound(f"training file {file_id} no longer exists", param="training_file")
    path = get_storage(settings).path(row.storage_key)
    if not path.is_file():  # the message names no storage path: the tenant reads it in the job's error
        raise NotFound(
            f"the stored content of training file {file_id} is missing",
            param="training_file",
            code="file_content_missing",
        )
    return path


def merged_hyperparameters(job: Job) -> dict[str, Any]:
    """Top-level ``hyperparameters`` overridden by ``method.supervised.hyperparameters`` (as OpenAI)."""
    hp = dict(job.hyperparameters or {})
    sup = ((job.method or {}).get("supervised") or {}).get("hyperparameters") or {}
    hp.update({k: v for k, v in sup.items() if v is not None})
    return hp


def job_view(session: Session, job: Job, settings: Settings) -> JobView:
    org = session.get(Organization, job.org_id)
    val = _file_path(session, job.org_id, job.validation_file, settings) if job.validation_file else None
    return JobView(
        id=job.id,
        org_name=org.name if org else job.org_id,
        model=job.model,
        training_file=_file_path(session, job.org_id, job.training_file, settings),
        validation_file=val,
        hyperparameters=merged_hyperparameters(job),
        seed=int(job.seed or 0),
        suffix=job.suffix,
        safety=dict(job.safety or {}),
    )


def with_overrides(cfg: Any, stage: str, settings: Settings) -> Any:
    """Apply ``Settings.stage_overrides[stage]`` to a frozen stage config (re-validated). An override key
    that is not a field of the stage's config is refused, naming the key (a typo must not pass silently)."""
    extra = settings.stage_overrides.get(stage) or {}
    known = {f.name for f in dataclasses.fields(cfg)}
    unknown = sorted(set(extra) - known)
    if unknown:
        raise InvalidConfig(
            f"TUNEGATE_STAGE_OVERRIDES[{stage!r}] has unknown key(s) {', '.join(unknown)}; "
            f"{type(cfg).__name__} has: {', '.join(sorted(known))}",
            param=f"stage_overrides.{stage}.{unknown[0]}",
        )
    return dataclasses.replace(cfg, **extra)


# --- building each stage's config and inputs, and running it -----------------------------------------------
# Stage modules import torch; they are imported inside the runners so that importing this module stays cheap.

CheckpointFn = Any  # Callable[[dict[str, Any]], None] | None


def _validate(view: JobView, io: Any, settings: Settings, _ck: CheckpointFn) -> dict[str, Any]:
    from worker.stages import validate as st

    cfg = st.ValidateConfig(
        model=view.model, min_examples=settings.min_examples, max_tokens=settings.max_example_tokens
    )
    cfg = with_overrides(cfg, "validate", settings)
    inputs = st.ValidateInputs(training_file=view.training_file, validation_file=view.validation_file, io=io)
    return st.run(cfg, inputs).to_dict()


def _score(view: JobView, io: Any, settings: Settings, _ck: CheckpointFn) -> dict[str, Any]:
    from tunegate.conversation import load_examples
    from worker.stages import score as st

    cfg = with_overrides(st.ScoreConfig(model=view.model, seed=view.seed), "score", settings)
    return st.run(cfg, st.ScoreInputs(examples=load_examples(view.training_file), io=io)).to_dict()


def _mitigate(view: JobView, io: Any, settings: Settings, _ck: CheckpointFn) -> dict[str, Any]:
    from tunegate.conversation import load_examples
    from worker.stages import mitigate as st
    from worker.stages.score import load_score_records

    pol = view.safety
    cfg = st.MitigateConfig(
        action=str(pol.get("mitigation", "downweight")),
        top_fraction=float(pol.get("mitigate_top_fraction", 0.05)),
        inject=bool(pol.get("inject_safety_examples", True)),
        seed=view.seed,
    )
    cfg = with_overrides(cfg, "mitigate", settings)
    records = load_score_records(stage_dir(settings, view.id, "score"))
    inputs = st.MitigateInputs(examples=load_examples(view.training_file), score_records=records, io=io)
    return st.run(cfg, inputs).to_dict()


def _train(view: JobView, io: Any, settings: Settings, ck: CheckpointFn) -> dict[str, Any]:
    from tunegate.conversation import load_examples
    from worker.stages import train as st
    from worker.stages.base import load_result

    mitigated = load_result(stage_dir(settings, view.id, "mitigate"))
    examples = load_examples(mitigated["train_file"])
    cfg = st.config_from_openai(
        view.model, view.hyperparameters, len(examples), seed=view.seed, precision=settings.precision
    )
    cfg = with_overrides(cfg, "train", settings)
    return st.run(cfg, st.TrainInputs(examples=examples, io=io, on_checkpoint=ck)).to_dict()


def _evaluate(view: JobView, io: Any, settings: Settings, _ck: CheckpointFn) -> dict[str, Any]:
    from tunegate.conversation import load_examples
    from worker.stages import evaluate as st
    from worker.stages.base import load_result

    trained = load_result(stage_dir(settings, view.id, "train"))
    cfg = with_overrides(st.EvalConfig(model=view.model), "evaluate", settings)
    inputs = st.EvalInputs(
        adapter_dir=Path(trained["adapter_dir"]), train_examples=load_examples(view.training_file), io=io
    )
    return st.run(cfg, inputs).to_dict()


def _gate(view: JobView, io: Any, settings: Settings, _ck: CheckpointFn) -> dict[str, Any]:
    from worker.stages import gate as st
    from worker.stages.base import load_result
    from worker.stages.score import load_score_records, load_score_summary

    pol = view.safety
    cfg = st.GateConfig.from_settings(
        settings,
        delta=pol.get("gate_delta"),
        cap=pol.get("gate_cap"),
        block_flagged_unmitigated=pol.get("block_unsafe_data"),
    )
    cfg = with_overrides(cfg, "gate", settings)
    score_dir = stage_dir(settings, view.id, "score")
    inputs = st.GateInputs(
        eval_result=load_result(stage_dir(settings, view.id, "evaluate")),
        score_summary=load_score_summary(score_dir),
        score_records=load_score_records(score_dir),
        io=io,
        mitigation=load_result(stage_dir(settings, view.id, "mitigate")),
        training=load_result(stage_dir(settings, view.id, "train")),
    )
    return st.run(cfg, inputs).to_dict()


RUNNERS = {
    "validate": _validate,
    "score": _score,
    "mitigate": _mitigate,
    "train": _train,
    "evaluate": _evaluate,
    "gate": _gate,
}


def run_stage(
    stage: str, view: JobView, io: Any, settings: Settings, on_checkpoint: CheckpointFn = None
) -> dict[str, Any]:
    """Build ``stage``'s config and inputs for ``view`` and run it; returns its ``result.json`` dict."""
    return RUNNERS[stage](view, io, settings, on_checkpoint)
