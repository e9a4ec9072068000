"""Creating a fine-tuning job: validate the request, honour ``Idempotency-Key``, store, enqueue by name."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.crud import get_file
from api.schemas import HyperparametersIn, JobCreateIn
from models.jobs import JobStatus, record_event
from models.policy import org_policy, tighten
from models.tables import File, Job, Organization
from tunegate import queue
from tunegate.errors import Conflict, InvalidRequest, ModelError, NotFound, Unprocessable
from tunegate.model_cache import model_available
from tunegate.settings import Settings

log = logging.getLogger(__name__)


def request_hash(body: JobCreateIn) -> str:
    canonical = json.dumps(body.model_dump(mode="json", exclude_none=True), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _usable_file(session: Session, org: Organization, file_id: str, param: str) -> File:
    try:
        row = get_file(session, org=org, file_id=file_id)
    except NotFound as exc:
        raise NotFound(f"{param}: no such file {file_id!r}", param=param, code="file_not_found") from exc
    if row.purpose != "fine-tune":
        raise Unprocessable(
            f"{param}: file {file_id} has purpose {row.purpose!r}, expected 'fine-tune'",
            param=param,
            code="invalid_file_purpose",
        )
    if row.status != "processed":
        detail = f": {row.status_details}" if row.status == "error" and row.status_details else ""
        code = "file_not_ready" if row.status == "uploaded" else "invalid_file"
        raise Unprocessable(
            f"{param}: file {file_id} is {row.status!r}, not 'processed'{detail}", param=param, code=code
        )
    return row


def _merge_hparams(body: JobCreateIn) -> dict[str, Any]:
    top = body.hyperparameters or HyperparametersIn()
    sup = body.method.supervised if body.method and body.method.supervised else None
    inner = sup.hyperparameters if sup and sup.hyperparameters else HyperparametersIn()
    merged: dict[str, Any] = {}
    for key in ("batch_size", "learning_rate_multiplier", "n_epochs"):
        a, b = getattr(top, key), getattr(inner, key)
        if a is not None and b is not None and a != b:
            raise Unprocessable(
                f"hyperparameters.{key}={a!r} contradicts method.supervised.hyperparameters.{key}={b!r}",
                param=f"hyperparameters.{key}",
            )
        merged[key] = b if b is not None else (a if a is not None else "auto")
    return merged


def _check_supported(body: JobCreateIn) -> None:
    """What the SDK can ask for but this gateway does not offer: a clear 400 naming the field."""
    if body.method is not None and body.method.type != "supervised":
        raise InvalidRequest(
            f"method.type {body.method.type!r} is not supported: this gateway offers only 'supervised' "
            "fine-tuning",
            param="method.type",
            code="unsupported_method",
        )
    if body.integrations:
        raise InvalidRequest(
            "integrations are not supported by this gateway; leave the field out",
            param="integrations",
            code="unsupported_integrations",
        )


def validate(session: Session, *, org: Organization, body: JobCreateIn, settings: Settings) -> dict[str, Any]:
    """Every check a job must pass before it is stored; returns the resolved columns."""
    _check_supported(body)
    if body.model not in settings.models:
        known = ", ".join(sorted(settings.models))
        raise Unprocessable(
            f"model {body.model!r} is not a base model offered here (available: {known})",
            param="model",
            code="model_not_available",
        )
    if not model_available(body.model, settings):
        # Tenant-facing: preparing a base model is the provider's job (the log says which one is missing).
        log.warning(
            "job refused: base model %r (%s) is not prepared", body.model, settings.models[body.model]
        )
        raise ModelError(
            f"model {body.model!r} is not available yet; try again later or choose another base model",
            param="model",
            code="model_not_available",
        )
    _usable_file(session, org, body.training_file, "training_file")
    if body.validation_file:
        _usable_file(session, org, body.validation_file, "validation_file")
    hparams = _merge_hparams(body)
    safety = tighten(org_policy(settings, org.policy), body.safety)
    return {
        "hyperparameters": hparams,
        "method": {"type": "supervised", "supervised": {"hyperparameters": hparams}},
        "safety": safety,
    }


def _existing(session: Session, org: Organization, key: str, digest: str) -> Job | None:
    job = session.scalar(select(Job).where(Job.org_id == org.id, Job.idempotency_key == key))
    if job is not None and job.request_hash != digest:
        raise Conflict(
            "Idempotency-Key was already used with a different request body",
            param="Idempotency-Key",
            code="idempotency_key_reused",
        )
    return job


def create_job(
    session: Session, *, org: Organization, body: JobCreateIn, settings: Settings, idempotency_key: str | None
) -> Job:
    digest = request_hash(body)
    if idempotency_key and (job := _existing(session, org, idempotency_key, digest)):
        return job
    cols = validate(session, org=org, body=body, settings=settings)
    job = Job(
        org_id=org.id,
        model=body.model,
        training_file=body.training_file,
        validation_file=body.validation_file,
        status=JobStatus.VALIDATING_FILES.value,
        suffix=body.suffix,
        seed=body.seed if body.seed is not None else _seed_from(digest),
        metadata_=body.metadata,
        idempotency_key=idempotency_key,
        request_hash=digest,
        stage=None,  # the worker's first stage claims a job that has none yet
        progress=0.0,
        **cols,
    )
    session.add(job)
    try:
        session.flush()  # assigns the id the first event names
        record_event(session, job, f"Created fine-tuning job: {job.id}", dedupe_key="created")
        record_event(session, job, f"Validating training file: {body.training_file}")
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same Idempotency-Key won the race
        if idempotency_key and (job := _existing(session, org, idempotency_key, digest)):
            return job
        raise
    enqueue_job(session, job, queue.START)
    return job


def _seed_from(digest: str) -> int:
    return int(digest[:8], 16) % (2**31 - 1)


def enqueue_job(session: Session, job: Job, task: str) -> None:
    """Hand the job to the workers by task name (``queue.START``, or ``queue.RESUME`` after a pause).

    The job is already committed: a broker failure is logged and recorded, and the reaper re-enqueues jobs
    whose message was lost once they are stale (answering an error here would make clients retry a change
    that was made).
    """
    try:
        queue.enqueue(task, job.id)
    except Exception as exc:  # any broker failure: the job is stored; report it, the reaper retries
        log.error("could not enqueue %s: %s", job.id, exc)
        record_event(
            session, job, "Could not reach the job queue; the reaper will enqueue it again", level="warn"
        )
        session.commit()
