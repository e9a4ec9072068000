"""Compare-and-set claims: exactly one worker runs a given stage of a job at a time.

A claim is one conditional ``UPDATE``: it succeeds only when the job is still active, sits at the stage the
task was sent for, and nobody holds it (or its holder stopped refreshing ``heartbeat_at``). A second copy of
the same Celery message, or a message for a stage the job has already left, matches zero rows and is
dropped. The holder proves ownership with ``claim_token`` on every later write (heartbeat, hand-off), so a
worker that was presumed dead and replaced can never overwrite its successor's progress.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.jobs import JobStatus
from models.tables import Job
from tunegate.errors import ClaimLost

ACTIVE = (JobStatus.VALIDATING_FILES.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claim:
    job_id: str
    stage: str
    token: str
    worker: str
    attempt: int


def worker_id() -> str:
    """``host:pid``, the name written into ``claimed_by``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def stale_before(stale_after_s: float, now: datetime | None = None) -> datetime:
    return (now or utcnow()) - timedelta(seconds=stale_after_s)


def _stage_matches(stage: str, first: bool) -> ColumnElement[bool]:
    if first:  # a new job has no stage yet
        return or_(Job.stage.is_(None), Job.stage == stage)
    return Job.stage == stage


def claim(
    session: Session, job_id: str, stage: str, *, worker: str, stale_after_s: float, first: bool = False
) -> Claim | None:
    """Take ``stage`` of ``job_id`` for ``worker``; ``None`` when someone else has it or the job moved on.
    ``first``: ``stage`` is the pipeline's first, which a new job (no stage yet) also matches."""
    now = utcnow()
    token = uuid.uuid4().hex
    free = or_(
        Job.claimed_by.is_(None),
        Job.heartbeat_at.is_(None),
        Job.heartbeat_at < stale_before(stale_after_s, now),
    )
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(ACTIVE), _stage_matches(stage, first), free)
        .values(claimed_by=worker, claim_token=token, heartbeat_at=now, attempt=Job.attempt + 1, stage=stage)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return None
    attempt = session.scalar(select(Job.attempt).where(Job.id == job_id)) or 1
    return Claim(job_id=job_id, stage=stage, token=token, worker=worker, attempt=int(attempt))


def _owned(c: Claim) -> ColumnElement[bool]:
    return (Job.id == c.job_id) & (Job.claim_token == c.token)


def heartbeat(session: Session, c: Claim) -> bool:
    """Refresh ``heartbeat_at``; False when the claim was lost (the job was reaped or ended)."""
    res = session.execute(
        update(Job)
        .where(_owned(c))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, c: Claim) -> bool:
    """Give the stage back (a transient error will retry it) without moving the job."""
    res = session.execute(
        update(Job)
        .where(_owned(c))
        .values(claimed_by=None, claim_token=None)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def hand_off(session: Session, c: Claim, next_stage: str) -> bool:
    """Move the job to ``next_stage``, unclaimed, with a fresh heartbeat (the reaper's clock)."""
    res = session.execute(
        update(Job)
        .where(_owned(c))
        .values(stage=next_stage, claimed_by=None, claim_token=None, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def load_owned(session: Session, c: Claim) -> Job:
    """The job row, still held by this claim; raises ``ClaimLost`` otherwise."""
    job = session.get(Job, c.job_id, populate_existing=True)
    if job is None or job.claim_token != c.token:
        raise ClaimLost(f"job {c.job_id}: stage {c.stage} is no longer held by {c.worker}")
    return job


class Heartbeat:
    """Refresh the claim's ``heartbeat_at`` every ``interval_s`` from a daemon thread while a stage runs.

    The reaper treats a job whose heartbeat is older than ``Settings.stale_after_s`` as orphaned (its worker
    was killed or lost its database), so the interval must be well below that. A lost claim stops the thread;
    the stage notices at its next progress write (``load_owned`` raises ``ClaimLost``).
    """

    def __init__(self, c: Claim, interval_s: float) -> None:
        import threading

        self.claim = c
        self.interval_s = interval_s
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"heartbeat-{c.job_id}", daemon=True)

    def _loop(self) -> None:
        from sqlalchemy.exc import SQLAlchemyError

        from models.db import session_scope

        while not self._stop.wait(self.interval_s):
            try:
                with session_scope() as s:
                    if not heartbeat(s, self.claim):
                        self.lost = True
                        return
            except SQLAlchemyError as exc:  # the database is away for a moment: try again next beat
                log.warning("heartbeat of %s failed: %s", self.claim.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
