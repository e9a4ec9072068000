"""Creating a fine-tuning job: validate the request, honour ``Idempotency-Key``, check the organization's
active-job limit, store, and let the dispatcher (``models/dispatch.py``) hand it to the workers in turn."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Literal, TypedDict, TypeVar

from kombu.exceptions import KombuError
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from api.schemas import HyperparametersIn, JobCreateIn
from api.services.crud import get_file, lock_org
from models.dispatch import dispatch
from models.jobs import TERMINAL, JobStatus, record_event
from models.policy import Policy, max_active_jobs, org_policy, tighten
from models.records import Hyperparameters, JobMethod
from models.tables import File, Job, Organization
from tunegate.errors import (
    Conflict,
    InvalidRequest,
    ModelError,
    NotFound,
    TooManyActiveJobs,
    Unprocessable,
)
from tunegate.model_cache import missing_reason
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


N = TypeVar("N", int, float)


def _merged(key: str, a: N | Literal["auto"] | None, b: N | Literal["auto"] | None) -> N | Literal["auto"]:
    """One hyperparameter given at the top level (``a``) and under ``method.supervised`` (``b``)."""
    if a is not None and b is not None and a != b:
        raise Unprocessable(
            f"hyperparameters.{key}={a!r} contradicts method.supervised.hyperparameters.{key}={b!r}",
            param=f"hyperparameters.{key}",
        )
    return b if b is not None else (a if a is not None else "auto")


def _merge_hparams(body: JobCreateIn) -> Hyperparameters:
    top = body.hyperparameters or HyperparametersIn()
    sup = body.method.supervised if body.method and body.method.supervised else None
    inner = sup.hyperparameters if sup and sup.hyperparameters else HyperparametersIn()
    return {  # in this order (the stored JSON's)
        "batch_size": _merged("batch_size", top.batch_size, inner.batch_size),
        "learning_rate_multiplier": _merged(
            "learning_rate_multiplier", top.learning_rate_multiplier, inner.learning_rate_multiplier
        ),
        "n_epochs": _merged("n_epochs", top.n_epochs, inner.n_epochs),
    }


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


class JobColumns(TypedDict):
    """A new job's resolved columns."""

    hyperparameters: Hyperparameters
    method: JobMethod
    safety: Policy


def validate(session: Session, *, org: Organization, body: JobCreateIn, settings: Settings) -> JobColumns:
    """Every check a job must pass before it is stored; returns the resolved columns."""
    _check_supported(body)
    if body.model not in settings.models:
        known = ", ".join(sorted(settings.models))
        raise Unprocessable(
            f"model {body.model!r} is not a base model offered here (available: {known})",
            param="model",
            code="model_not_available",
        )
    why = missing_reason(body.model, settings)
    if why is not None:
        # Preparing a base model is the operator's step: the message says which and how (no path; the log
        # has the registry source).
        log.warning(
            "job refused: base model %r (%s) is not prepared", body.model, settings.models[body.model]
        )
        raise ModelError(f"model {why}", param="model", code="model_not_available")
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
    try:
        locked = lock_org(session, org_id=org.id)  # this org's creates go one at a time from here
        if idempotency_key and (found := _existing(session, org, idempotency_key, digest)):
            return found  # made by a concurrent request with the same key while this one validated
        _check_active_limit(session, locked, settings)
        session.add(job)
        session.flush()  # assigns the id the first event names
        record_event(session, job, f"Created fine-tuning job: {job.id}", dedupe_key="created")
        record_event(session, job, f"Validating training file: {body.training_file}")
        session.commit()
    except IntegrityError:
        session.rollback()  # a concurrent request with the same Idempotency-Key won the race
        if idempotency_key and (job := _existing(session, org, idempotency_key, digest)):
            return job
        raise
    except BaseException:
        session.rollback()
        raise
    dispatch_jobs()
    return job


ACTIVE_STATUSES = tuple(s.value for s in JobStatus if s not in TERMINAL)  # paused jobs count


def _check_active_limit(session: Session, locked: Organization, settings: Settings) -> None:
    """Refuse a job past the organization's active-job limit (429 ``too_many_active_jobs``). ``locked``: the
    organization's row, held by this transaction (``lock_org``; SQLite's BEGIN IMMEDIATE serializes writers
    anyway), so concurrent creates of one organization are counted one after the other and never pass the
    limit together."""
    limit = max_active_jobs(settings, locked.policy)
    active = session.scalar(
        select(func.count()).select_from(Job).where(Job.org_id == locked.id, Job.status.in_(ACTIVE_STATUSES))
    )
    if (active or 0) >= limit:
        raise TooManyActiveJobs(
            f"this organization has {active} active fine-tuning jobs (validating_files, queued, running or "
            f"paused) and may have at most {limit} at once; wait for one to finish or cancel one, then retry",
            retry_after=60,
        )


def _seed_from(digest: str) -> int:
    return int(digest[:8], 16) % (2**31 - 1)


def dispatch_jobs() -> None:
    """Let the dispatcher admit waiting jobs now (after a job was created, resumed, paused or cancelled: a
    job waits, or a turn came free). The change is already committed: a database or broker failure here is
    logged, and the workers' reaper dispatches on its next pass (answering an error would make clients retry
    a change that was made)."""
    try:
        dispatch()
    except (SQLAlchemyError, KombuError, ConnectionError) as exc:
        log.error("could not dispatch jobs now (the reaper will): %s", exc)
