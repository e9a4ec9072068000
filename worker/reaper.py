"""Requeue jobs whose worker stopped reporting, and jobs whose queued message was lost; admit waiting jobs;
delete what expired.

An admitted, active job is *stale* when its ``heartbeat_at`` (set when the dispatcher admitted it, then by its
workers; before that ``created_at``) is older than ``Settings.stale_after_s``: its worker was SIGKILLed, lost
its database, or the broker lost the message (a Redis restart without persistence). A job waiting for its
turn (not admitted, ``models/dispatch.py``) has no message to lose and is never stale. For each stale job,
one compare-and-set ``UPDATE`` frees the claim and bumps the heartbeat (so concurrent reapers in several
workers requeue it once), a running job goes back to ``queued`` through ``transition`` with an event naming
the silent worker, and the current stage's task is sent again. A stage that resumes finds its checkpoints
and finished outputs on disk, so no work is redone twice.

``reap_expired`` deletes files whose ``expires_after`` has passed and the parts of uploads that expired
(``models/files.py``), in the same periodic pass, which also runs the dispatcher
(``models.dispatch.dispatch``: turns that came free while no dispatch ran, e.g. the broker was away).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.dispatch import dispatch
from models.files import expire_files, expire_uploads
from models.jobs import JobStatus, record_event, transition
from models.tables import Job
from tunegate import queue
from tunegate.errors import TransientError
from tunegate.jsontypes import JsonObject
from tunegate.settings import Settings, get_settings
from tunegate.storage import get_storage
from worker import webhooks
from worker.claims import ACTIVE, stale_before
from worker.stages.all import PIPELINE

log = logging.getLogger(__name__)


def stale_jobs(session: Session, settings: Settings, now: datetime | None = None) -> list[str]:
    cutoff = stale_before(settings.stale_after_s, now)
    stmt = select(Job.id).where(
        Job.status.in_(ACTIVE),
        Job.admitted_at.is_not(None),  # a waiting job was sent nothing yet
        or_(Job.heartbeat_at < cutoff, and_(Job.heartbeat_at.is_(None), Job.created_at < cutoff)),
    )
    return list(session.scalars(stmt.order_by(Job.id)))


def _requeue_one(session: Session, job_id: str, settings: Settings) -> str | None:
    """Free one stale job (CAS on the heartbeat we saw); returns the stage to resend, or None."""
    job = session.get(Job, job_id, populate_existing=True)
    if job is None:
        return None
    seen = job.heartbeat_at
    cutoff = stale_before(settings.stale_after_s)
    unchanged = (
        and_(Job.heartbeat_at.is_(None), Job.created_at < cutoff)
        if seen is None
        else and_(Job.heartbeat_at == seen, Job.heartbeat_at < cutoff)
    )
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE), unchanged)
        .values(claimed_by=None, claim_token=None, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return None  # another reaper got it, or the worker reported in the meantime
    stage = job.stage or PIPELINE.first.name
    # The event is tenant-visible: it says what happened, the log says which worker (host:pid) it was.
    log.warning("job %s: requeuing %s; %s went silent", job_id, stage, job.claimed_by or "its queued message")
    who = "its worker" if job.claimed_by else "no worker (the queued message was lost)"
    msg = f"requeued {stage}: {who} stopped reporting for over {settings.stale_after_s}s"
    data: JsonObject = {"stage": stage, "progress": job.progress, "attempt": job.attempt}
    key = f"reap:{stage}:{job.attempt}:{seen.isoformat() if seen else 'new'}"
    session.refresh(job)
    if job.status == JobStatus.RUNNING:
        transition(session, job, JobStatus.QUEUED, message=msg, level="warn", data=data, dedupe_key=key)
    else:
        record_event(session, job, msg, level="warn", data=data, dedupe_key=key)
    return stage


def reap(settings: Settings | None = None) -> list[str]:
    """Requeue every stale job once; returns their ids. Safe to run from many workers at once."""
    settings = settings or get_settings()
    with session_scope() as s:
        candidates = stale_jobs(s, settings)
    requeued = []
    for job_id in candidates:
        with session_scope() as s:
            stage = _requeue_one(s, job_id, settings)
        if stage is None:
            continue
        spec = PIPELINE[stage]
        queue.enqueue(spec.task, job_id, queue=spec.queue)
        log.warning("requeued job %s at stage %s", job_id, stage)
        requeued.append(job_id)
    return requeued


def reap_expired(settings: Settings | None = None) -> tuple[list[str], list[str]]:
    """Delete files past their ``expires_after`` and remove expired uploads' parts; returns their ids."""
    settings = settings or get_settings()
    storage = get_storage(settings)
    return expire_files(storage), expire_uploads(storage, settings)


class ReaperThread(threading.Thread):
    """Runs ``reap``, the dispatcher, ``reap_expired`` and the webhook sweep (``worker.webhooks.sweep``: due
    deliveries whose retries are left to it or whose message was lost) every ``Settings.reap_interval_s``
    inside a worker process (every worker runs one)."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="tunegate-reaper", daemon=True)
        self.settings = settings
        self.stopped = threading.Event()

    def run(self) -> None:
        from kombu.exceptions import OperationalError as BrokerError
        from sqlalchemy.exc import SQLAlchemyError

        while not self.stopped.wait(self.settings.reap_interval_s):
            try:
                reap(self.settings)
            except (SQLAlchemyError, BrokerError, ConnectionError) as exc:
                log.warning("reaper pass failed, will retry: %s", exc)
            try:
                dispatch(self.settings)
            except (SQLAlchemyError, BrokerError, ConnectionError) as exc:
                log.warning("dispatch pass failed, will retry: %s", exc)
            try:
                reap_expired(self.settings)
            except (SQLAlchemyError, OSError, TransientError) as exc:  # e.g. the object store away
                log.warning("expiry pass failed, will retry: %s", exc)
            try:
                webhooks.sweep(self.settings)
            except (SQLAlchemyError, BrokerError, ConnectionError) as exc:
                log.warning("webhook sweep failed, will retry: %s", exc)
