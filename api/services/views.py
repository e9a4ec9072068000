"""Rows to response objects: integer unix timestamps, nullable fields as null, OpenAI object names.

Text the worker wrote (event messages and data, job errors) is scrubbed of server paths, storage keys,
worker identities and operator commands on the way out (``tunegate.redact``), also for rows written before
the worker stopped writing them."""

from __future__ import annotations

from pydantic import TypeAdapter

from api.schemas import (
    CheckpointMetricsOut,
    CheckpointOut,
    EventOut,
    FileOut,
    HyperparametersOut,
    JobErrorOut,
    JobOut,
    MethodOut,
    RepairOut,
    UploadOut,
    WebhookCreatedOut,
    WebhookDeliveryOut,
    WebhookOut,
)
from api.services.crud import EventRow, JobRow
from models.base import unix, utcnow
from models.jobs import fine_tuned_model_name
from models.policy import policy_json
from models.records import Hyperparameters
from models.tables import (
    Checkpoint,
    File,
    Job,
    JobEvent,
    Upload,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from tunegate.netguard import recorded_outcome
from tunegate.redact import scrub, scrub_value
from tunegate.settings import get_settings


def file_out(row: File) -> FileOut:
    return FileOut(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,  # type: ignore[arg-type]
        status_details=row.status_details,
        expires_at=unix(row.expires_at),
    )


def upload_out(row: Upload, file: FileOut | None = None) -> UploadOut:
    """``completing`` (being assembled) is shown as ``pending``; a pending upload past its ``expires_at`` as
    ``expired`` (the reaper marks it so a little later)."""
    status = "pending" if row.status == "completing" else row.status
    if status == "pending" and row.expires_at <= utcnow():
        status = "expired"
    return UploadOut(
        id=row.id,
        bytes=row.bytes,
        created_at=unix(row.created_at) or 0,
        expires_at=unix(row.expires_at) or 0,
        filename=row.filename,
        purpose=row.purpose,
        status=status,  # type: ignore[arg-type]
        file=file,
    )


_METHOD = TypeAdapter(MethodOut)
_REPAIR = TypeAdapter(RepairOut)


def _hparams(stored: Hyperparameters) -> HyperparametersOut:
    return HyperparametersOut(
        batch_size=stored.get("batch_size", "auto"),
        learning_rate_multiplier=stored.get("learning_rate_multiplier", "auto"),
        n_epochs=stored.get("n_epochs", "auto"),
    )


def job_out(row: Job | JobRow, *, estimated_finish: int | None = None, waiting: str | None = None) -> JobOut:
    """A paused job's ``status`` reads ``Settings.paused_status`` (``paused: true`` either way)."""
    settings = get_settings()
    failed = row.status == "failed" and row.error
    err = JobErrorOut(**scrub_value(row.error, settings)) if failed else None
    paused = row.status == "paused"
    return JobOut(
        id=row.id,
        created_at=unix(row.created_at) or 0,
        error=err,
        fine_tuned_model=row.fine_tuned_model if row.released else None,
        finished_at=unix(row.finished_at),
        hyperparameters=_hparams(row.hyperparameters or {}),
        model=row.model,
        organization_id=row.org_id,
        result_files=list(row.result_files or []),
        seed=row.seed,
        status=settings.paused_status if paused else row.status,  # type: ignore[arg-type]
        trained_tokens=row.trained_tokens,
        training_file=row.training_file,
        validation_file=row.validation_file,
        estimated_finish=estimated_finish,
        user_provided_suffix=row.suffix,
        metadata=row.metadata_ or None,
        method=_METHOD.validate_python(row.method or {}),
        safety=policy_json(row.safety or {}),
        stage=row.stage,
        progress=row.progress or 0.0,
        cancel_requested=row.cancel_requested,
        released=row.released,
        paused=paused,
        pause_requested=row.pause_requested,
        repair=None if row.repair is None else _REPAIR.validate_python(row.repair),
        waiting=waiting,
    )


def event_out(row: JobEvent | EventRow) -> EventOut:
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


def webhook_out(row: WebhookEndpoint) -> WebhookOut:
    return WebhookOut(id=row.id, url=row.url, events=list(row.events), created_at=unix(row.created_at) or 0)


def webhook_created_out(row: WebhookEndpoint) -> WebhookCreatedOut:
    """The only answer that carries the signing secret."""
    return WebhookCreatedOut(**webhook_out(row).model_dump(), secret=row.secret)


def delivery_out(row: WebhookDelivery, event: WebhookEvent) -> WebhookDeliveryOut:
    """A status class of the latest attempt, never the receiver's status code or error text (SSRF probing)."""
    result = recorded_outcome(row.last_status_code, row.last_error)
    return WebhookDeliveryOut(
        id=row.id,
        endpoint_id=row.endpoint_id,
        event_id=event.id,
        event_type=event.type,
        job_id=event.job_id,
        status=row.status,  # type: ignore[arg-type]
        attempts=row.attempts,
        last_result=result,
        last_error=None if row.status == "delivered" else result,
        created_at=unix(row.created_at) or 0,
        delivered_at=unix(row.delivered_at),
        next_attempt_at=unix(row.next_attempt_at) if row.status == "pending" else None,
    )
