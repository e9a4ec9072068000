"""Job status: the enum, the allowed moves, and THE one function that changes a job's status.

    validating_files ──> queued ──> running ──> succeeded
          │                │          │  └───> failed / cancelled
          │                │          └──────> queued  (a stale job requeued by the reaper)
          └────────────────┴──> failed / cancelled
    queued / running ──> paused  (``pause``: a queued job at once, a running one at its next checkpoint)
    paused ──> queued (``resume``, at the stage it paused in) | cancelled
    failed (blocked by the gate) ──> succeeded   only as a moderator's override (``override=True``)

A new or resumed job waits (``admitted_at`` unset) until the dispatcher (``models/dispatch.py``) admits it in
its organization's turn; pausing ends that turn.

Every status change goes through ``transition`` and appends a ``JobEvent``; other events go through
``record_event``. Both are idempotent on ``dedupe_key`` so a redelivered Celery task cannot write twice.
Neither commits: the caller's session scope does. A terminal status also writes the organization's webhook
events (``models.webhooks.emit``) in the same transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from enum import StrEnum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models import webhooks
from models.base import utcnow
from models.tables import Job, JobEvent
from tunegate.errors import Conflict, JobError, NotFound, PermissionDenied
from tunegate.jsontypes import JsonValue


class JobStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.VALIDATING_FILES: frozenset({JobStatus.QUEUED, JobStatus.FAILED, JobStatus.CANCELLED}),
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}),
    JobStatus.RUNNING: frozenset(
        {JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED}
    ),
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}
# Moves only provider staff make (models/moderation.py), never a worker or a tenant.
OVERRIDES: dict[JobStatus, frozenset[JobStatus]] = {JobStatus.FAILED: frozenset({JobStatus.SUCCEEDED})}
LEVELS = ("info", "warn", "error")
EVENT_TYPES = ("message", "metrics")


def can_transition(src: str, dst: str) -> bool:
    return JobStatus(dst) in ALLOWED[JobStatus(src)]


KEY_CHARS = 256  # JobEvent.dedupe_key's column width


def stored_key(dedupe_key: str | None) -> str | None:
    """The dedupe key as stored: itself when it fits the column, else its head and a digest of the whole (a
    progress event's key holds its message, which can be long: a screen verdict naming its lines)."""
    if dedupe_key is None or len(dedupe_key) <= KEY_CHARS:
        return dedupe_key
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()
    return f"{dedupe_key[: KEY_CHARS - len(digest) - 1]}#{digest}"


def _event_exists(session: Session, job_id: str, dedupe_key: str | None) -> bool:
    dedupe_key = stored_key(dedupe_key)
    if dedupe_key is None:
        return False
    found = session.scalar(
        select(JobEvent.id).where(JobEvent.job_id == job_id, JobEvent.dedupe_key == dedupe_key)
    )
    return found is not None


def _next_seq(session: Session, job: Job) -> int:
    # One atomic UPDATE ... RETURNING: concurrent writers (API cancel, worker) never share a seq.
    seq = session.execute(
        update(Job)
        .where(Job.id == job.id)
        .values(event_count=Job.event_count + 1)
        .returning(Job.event_count)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    return int(seq)


def _append(
    session: Session,
    job: Job,
    message: str,
    *,
    type: str,
    level: str,
    data: Mapping[str, JsonValue] | None,
    dedupe_key: str | None,
) -> JobEvent:
    if level not in LEVELS:
        raise ValueError(f"event level must be one of {LEVELS}, got {level!r}")
    if type not in EVENT_TYPES:
        raise ValueError(f"event type must be one of {EVENT_TYPES}, got {type!r}")
    payload = dict(data or {})
    payload.setdefault("stage", job.stage)
    payload.setdefault("progress", job.progress)
    session.flush()  # the job row must exist before its event count is bumped
    event = JobEvent(
        job_id=job.id,
        seq=_next_seq(session, job),
        level=level,
        type=type,
        message=message,
        data=payload,
        dedupe_key=stored_key(dedupe_key),
    )
    session.add(event)
    session.flush()
    return event


def record_event(
    session: Session,
    job: Job,
    message: str,
    *,
    type: str = "message",
    level: str = "info",
    data: Mapping[str, JsonValue] | None = None,
    dedupe_key: str | None = None,
) -> bool:
    """Append a non-status event; returns False (and writes nothing) if ``dedupe_key`` was already used.

    ``data`` always ends up with ``stage`` and ``progress`` (the job's current values unless given).
    """
    if _event_exists(session, job.id, dedupe_key):
        return False
    _append(session, job, message, type=type, level=level, data=data, dedupe_key=dedupe_key)
    return True


def transition(
    session: Session,
    job: Job,
    to: JobStatus | str,
    *,
    message: str,
    level: str = "info",
    data: Mapping[str, JsonValue] | None = None,
    error: JobError | None = None,
    dedupe_key: str | None = None,
    override: bool = False,
) -> bool:
    """Move ``job`` to status ``to`` and append an event; the only place a job's status changes.

    Returns False without writing when the move was already made (same status, or ``dedupe_key`` seen:
    a redelivered task). Raises ``Conflict`` for a move the table does not allow. ``error`` (``{code,
    message, param}``) is stored only on ``failed``. ``data`` may carry ``stage``/``progress``, which also
    update the job. Reaching ``succeeded``/``failed``/``cancelled`` writes the webhook events of the job's
    organization (``models.webhooks``), sent once this transaction commits. ``override`` also allows the
    moderator's moves (``OVERRIDES``).
    """
    dst = JobStatus(to)
    src = JobStatus(job.status)
    if _event_exists(session, job.id, dedupe_key) or src == dst:
        return False
    allowed = ALLOWED[src] | (OVERRIDES.get(src, frozenset()) if override else frozenset())
    if dst not in allowed:
        raise Conflict(
            f"job {job.id} cannot go from {src.value} to {dst.value}",
            param="status",
            code="invalid_status_transition",
        )
    _apply(job, dst, data, error)
    _append(session, job, message, type="message", level=level, data=data, dedupe_key=dedupe_key)
    webhooks.emit_status(session, job, dst.value)  # the outbox row, in this same transaction
    return True


def _apply(job: Job, dst: JobStatus, data: Mapping[str, JsonValue] | None, error: JobError | None) -> None:
    job.status = dst.value
    if data and data.get("stage") is not None:
        job.stage = str(data["stage"])
    progress = data.get("progress") if data else None
    if isinstance(progress, int | float):
        job.progress = float(progress)
    if dst == JobStatus.SUCCEEDED:
        job.progress = 1.0
        job.error = None  # an overridden block no longer reads as failed
    if dst == JobStatus.FAILED:
        job.error = _error_dict(error)
    if dst in TERMINAL or dst == JobStatus.PAUSED:  # nobody holds a paused job: resume sends it again
        job.claim_token = None
        job.claimed_by = None
    if dst == JobStatus.PAUSED:  # its turn ends: resumed, it waits for the dispatcher like a new job
        job.admitted_at = None
    if dst in TERMINAL:
        job.finished_at = utcnow()
    if dst in TERMINAL or dst == JobStatus.PAUSED:
        job.pause_requested = False


def _error_dict(error: JobError | None) -> JobError:
    if error is None:
        return {"code": "job_failed", "message": "the job failed", "param": None}
    return {
        "code": str(error.get("code") or "job_failed"),
        "message": str(error.get("message") or "the job failed"),
        "param": error.get("param"),
    }


def pause(session: Session, job: Job) -> None:
    """A tenant's pause request: an unclaimed queued job pauses at once; a running (or claimed) one is
    flagged and its worker pauses at the next checkpoint (the end of a training epoch, or before its next
    stage starts). Raises ``Conflict`` for a job that is finished, paused or being cancelled."""
    status = JobStatus(job.status)
    if status in TERMINAL or status == JobStatus.PAUSED or job.cancel_requested:
        what = "being cancelled" if job.cancel_requested and status not in TERMINAL else status.value
        raise Conflict(
            f"job {job.id} is {what}; only a queued or running job can be paused",
            param="fine_tuning_job_id",
            code="invalid_status_transition",
        )
    if status == JobStatus.QUEUED and job.claimed_by is None:
        transition(session, job, JobStatus.PAUSED, message="Job paused by the user")
    elif not job.pause_requested:
        job.pause_requested = True
        record_event(session, job, "Pause requested; the job pauses at its next checkpoint")


def resume(session: Session, job: Job) -> None:
    """A paused job goes back to ``queued`` at the stage it paused in (the dispatcher sends that stage again
    in its organization's turn, ``models/dispatch.py``; training continues from its latest checkpoint).
    A job asked to pause that has not paused yet (running, or queued and claimed) goes on: its pause request
    is withdrawn. Raises ``Conflict`` for a job that is neither paused nor asked to pause."""
    if job.status != JobStatus.PAUSED and job.pause_requested and JobStatus(job.status) not in TERMINAL:
        job.pause_requested = False  # what the worker reads at its next checkpoint
        record_event(session, job, "Pause request withdrawn by the user; the job goes on")
        return
    if job.status != JobStatus.PAUSED:
        raise Conflict(
            f"job {job.id} is {job.status}; only a paused job can be resumed",
            param="fine_tuning_job_id",
            code="invalid_status_transition",
        )
    transition(
        session, job, JobStatus.QUEUED, message=f"Job resumed by the user at {job.stage or 'its start'}"
    )


def fine_tuned_model_name(base: str, org_name: str, suffix: str | None, job_id: str) -> str:
    """The released model's name, ``ft:<base>:<org>:<suffix>:<id>`` (empty suffix when none was given)."""
    return f"ft:{base}:{org_name}:{suffix or ''}:{job_id}"


def check_released(job: Job) -> None:
    """Whether ``job``'s trained adapter may leave: released by its safety gate (or an override), not revoked
    by the provider (``PermissionDenied``), its fine-tuned model not deleted (``NotFound``). The adapter
    download and ``tunegate export`` both ask here."""
    if job.revoked_at is not None:
        raise PermissionDenied(
            f"the adapter of job {job.id} was revoked by the provider",
            param="fine_tuning_job_id",
            code="adapter_revoked",
        )
    if not job.released:
        why = f"error {job.error['code']}" if job.error else f"status {job.status}"
        raise PermissionDenied(
            f"the adapter of job {job.id} is not released ({why})",
            param="fine_tuning_job_id",
            code="adapter_not_released",
        )
    if job.model_deleted_at is not None:
        raise NotFound(
            f"the fine-tuned model of job {job.id} was deleted",
            param="fine_tuning_job_id",
            code="model_deleted",
        )
