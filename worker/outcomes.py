"""What a finished stage changes on its job row, and the event that says so.

Each applier runs inside the transaction that also hands the job to the next stage, and returns that stage
(or ``None`` when the job ended). Every event is keyed ``<stage>:done``, so a stage re-applied after a crash
between its commit and its acknowledgement writes nothing twice. Status moves go through ``transition``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from models.jobs import JobStatus, fine_tuned_model_name, record_event, transition
from models.tables import Job
from tunegate.settings import get_settings
from worker.pipeline import JobView, next_stage, overall_progress, stage_dir
from worker.stages.base import load_result

Applier = Callable[[Session, Job, dict[str, Any], JobView], str | None]


def _data(stage: str, **extra: Any) -> dict[str, Any]:
    return {"stage": stage, "progress": overall_progress(stage, 1.0), **extra}


def _validate(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    msg = (
        f"validated {res['n_examples']} training examples with the base model's tokenizer "
        f"(longest {res['max_example_tokens']} of {res['token_limit']} tokens)"
    )
    transition(
        s, job, JobStatus.QUEUED, message=msg, data=_data("validate", **res), dedupe_key="validate:done"
    )
    return next_stage("validate")


def _score(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    verdict = res.get("verdict") or {}
    flagged = "flagged as high-risk" if verdict.get("flagged") else "not flagged"
    msg = f"scored {res.get('n_examples')} examples; dataset {flagged}: {verdict.get('reason', '')}".rstrip(
        ": "
    )
    record_event(s, job, msg, type="metrics", data=_data("score", verdict=verdict), dedupe_key="score:done")
    return next_stage("score")


def _mitigate(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    msg = (
        f"mitigation: {res.get('n_dropped', 0)} dropped, {res.get('n_downweighted', 0)} down-weighted, "
        f"{res.get('n_injected', 0)} safety examples injected; {res.get('n_output')} examples to train on"
    )
    counts = {k: v for k, v in res.items() if k.startswith("n_")}
    record_event(s, job, msg, type="metrics", data=_data("mitigate", **counts), dedupe_key="mitigate:done")
    return next_stage("mitigate")


def _train(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    job.trained_tokens = int(res.get("trained_tokens") or 0)
    metrics = {k: v for k, v in (res.get("metrics") or {}).items() if isinstance(v, int | float)}
    msg = f"trained {res.get('steps')} steps over {res.get('epochs')} epochs ({job.trained_tokens} tokens)"
    if res.get("resumed_from_epoch"):
        msg += f", resumed from the epoch-{res['resumed_from_epoch']} checkpoint"
    record_event(s, job, msg, type="metrics", data=_data("train", **metrics), dedupe_key="train:done")
    return next_stage("train")


def asr_numbers(res: dict[str, Any]) -> dict[str, float]:
    """Base and fine-tuned ASR per template, flat: ``{"chat_base_asr": .., "chat_tuned_asr": ..}``."""
    out: dict[str, float] = {}
    for tpl, t in (res.get("templates") or {}).items():
        for which in ("base", "tuned"):
            asr = (t.get(which) or {}).get("asr") if isinstance(t, dict) else None
            if isinstance(asr, int | float):
                out[f"{tpl}_{which}_asr"] = float(asr)
    return out


def _evaluate(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    nums = asr_numbers(res)
    shown = ", ".join(f"{k} {v:.1%}" for k, v in nums.items()) or "no ASR figures"
    record_event(
        s,
        job,
        f"safety evaluation finished: {shown}",
        type="metrics",
        data=_data("evaluate", **nums),
        dedupe_key="evaluate:done",
    )
    return next_stage("evaluate")


def _gate(s: Session, job: Job, res: dict[str, Any], view: JobView) -> str | None:
    job.report_path = res.get("report_json") or res.get("report_path")
    # The report's location stays on the job row: tenants read it through /safety_report.
    data = _data("gate", released=bool(res.get("released")), code=res.get("code"))
    if res.get("released"):
        job.released = True
        trained = load_result(stage_dir(get_settings(), job.id, "train"))
        job.adapter_path = str(trained["adapter_dir"])
        job.fine_tuned_model = fine_tuned_model_name(job.model, view.org_name, job.suffix, job.id)
        transition(
            s,
            job,
            JobStatus.SUCCEEDED,
            message=f"released {job.fine_tuned_model}: {res.get('message')}",
            data=data,
            dedupe_key="gate:done",
        )
    else:
        error = {
            "code": res.get("code") or "safety_eval_failed",
            "message": res.get("message"),
            "param": None,
        }
        transition(
            s,
            job,
            JobStatus.FAILED,
            message=f"blocked: {res.get('message')}",
            level="error",
            data=data,
            error=error,
            dedupe_key="gate:done",
        )
    return None


APPLIERS: dict[str, Applier] = {
    "validate": _validate,
    "score": _score,
    "mitigate": _mitigate,
    "train": _train,
    "evaluate": _evaluate,
    "gate": _gate,
}
