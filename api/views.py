"""Rows to response objects: integer unix timestamps, nullable fields as null, OpenAI object names.

Text the worker wrote (event messages and data, job errors) is scrubbed of server paths, storage keys,
worker identities and operator commands on the way out (``tunegate.redact``), also for rows written before
the worker stopped writing them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import Row
from starlette.responses import Response

from api.schemas import CheckpointMetricsOut, CheckpointOut, EventOut, FileOut, JobErrorOut, JobOut
from models.base import unix
from models.jobs import fine_tuned_model_name
from models.tables import Checkpoint, File, Job, JobEvent
from tunegate.redact import scrub, scrub_value
from tunegate.settings import get_settings

HPARAM_KEYS = ("batch_size", "learning_rate_multiplier", "n_epochs")


def file_out(row: File) -> FileOut:
    return FileOut(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,  # type: ignore[arg-type]
        status_details=row.status_details,
    )


def _hparams(stored: dict[str, Any]) -> dict[str, Any]:
    return {k: stored.get(k, "auto") for k in HPARAM_KEYS}


def job_out(row: Job | Row[Any]) -> JobOut:
    failed = row.status == "failed" and row.error
    err = JobErrorOut(**scrub_value(row.error, get_settings())) if failed else None
    return JobOut(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        error=err,
        fine_tuned_model=row.fine_tuned_model if row.released else None,
        finished_at=unix(row.finished_at),
        hyperparameters=_hparams(row.hyperparameters or {}),  # type: ignore[arg-type]
        model=row.model,
        organization_id=row.org_id,
        result_files=list(row.result_files or []),
        seed=row.seed,
        status=row.status,  # type: ignore[arg-type]
        trained_tokens=row.trained_tokens,
        training_file=row.training_file,
        validation_file=row.validation_file,
        metadata=row.metadata_ or None,
        method=row.method or {},
        safety=row.safety or {},
        stage=row.stage,
        progress=row.progress or 0.0,
        cancel_requested=row.cancel_requested,
        released=row.released,
    )


def event_out(row: JobEvent | Row[Any]) -> EventOut:
    settings = get_settings()
    return EventOut(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        level=row.level,  # type: ignore[arg-type]
        message=scrub(row.message, settings),
        data=scrub_value(row.data or {}, settings),
        type=row.type,  # type: ignore[arg-type]
    )


def checkpoint_out(row: Checkpoint, job: Job, org_name: str) -> CheckpointOut:
    base = job.fine_tuned_model or fine_tuned_model_name(job.model, org_name, job.suffix, job.id)
    return CheckpointOut(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        fine_tuned_model_checkpoint=f"{base}:ckpt-step-{row.step_number}",
        fine_tuning_job_id=job.id,
        step_number=row.step_number,
        metrics=CheckpointMetricsOut(**(row.metrics or {})),
    )


def json_response(body: BaseModel) -> Response:
    """``body`` as JSON, serialized once by pydantic. A route that declares ``response_model`` and returns
    this skips FastAPI's second validation of the object it just built (the poll routes)."""
    return Response(body.model_dump_json(), media_type="application/json")
