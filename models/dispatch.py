"""The dispatcher: hands waiting jobs to the workers, fairly across organizations.

A new job (``validating_files``) or a resumed one (``queued``) is stored without a broker message: it waits,
``admitted_at`` unset, until ``dispatch`` admits it. ``dispatch`` admits waiting jobs while fewer than
``Settings.worker_slots * Settings.jobs_per_worker_slot`` admitted jobs are unfinished, one at a time, each
from the organization whose turn it is:

    1. the fewest admitted, unfinished jobs          (an org with nothing running goes before a busy one)
    2. then the longest since its last admission     (never admitted: first; this makes it round-robin)
    3. then the oldest waiting job                   (first come, first served between equals)

and within that organization its oldest waiting job. So one organization's backlog delays another
organization's next job by at most one running job per slot (with one job per slot, the default): when a job
ends, the organization that has waited longest since its last turn is next.

Admission is a compare-and-set ``UPDATE`` (still waiting: ``admitted_at`` unset, nobody holds the job) that
also starts the reaper's clock (``heartbeat_at``) and records the organization's turn
(``Organization.last_admitted_at``), in one transaction with the counting: SQLite serializes it (sessions
begin ``IMMEDIATE``), PostgreSQL through a transaction-level advisory lock. Two dispatchers (the API after a
create, each worker after a job ends, every reaper pass) therefore never admit one job twice, nor more jobs
than the slots hold. The messages go after the commit: ``START`` for a job still
validating its files, ``RESUME`` (the stage it paused in) for a queued one. A message the broker refuses gives
the job's turn back (it waits again; the next dispatch retries); a message lost after it was sent is resent by
the reaper once the admitted job's heartbeat is stale (``worker/reaper.py``).

Callers: ``api/services/job_create.py`` (after a job is created, cancelled, paused or resumed),
``worker/runner.py`` (after a job ends or pauses) and ``worker/reaper.py`` (every pass).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import ColumnElement, and_, func, select, text, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.jobs import JobStatus
from models.tables import Job, Organization
from tunegate import queue
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)

WAITING = (JobStatus.VALIDATING_FILES.value, JobStatus.QUEUED.value)  # when not admitted
UNFINISHED = (JobStatus.VALIDATING_FILES.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value)
LOCK_KEY = 0x7467_6469_7370_6174  # "tgdispat": PostgreSQL's advisory lock of the dispatcher
NEVER = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Admission:
    job_id: str
    org_id: str
    task: str  # queue.START | queue.RESUME
    admitted_at: datetime


def capacity(settings: Settings) -> int:
    """Admitted jobs that may be unfinished at once."""
    return settings.worker_slots * settings.jobs_per_worker_slot


def waiting() -> ColumnElement[bool]:
    """A job waiting for its turn: new or resumed, not admitted, held by nobody."""
    return and_(Job.admitted_at.is_(None), Job.status.in_(WAITING), Job.claimed_by.is_(None))


def in_flight() -> ColumnElement[bool]:
    """An admitted job that has not finished (paused ones gave their turn back)."""
    return and_(Job.admitted_at.is_not(None), Job.status.in_(UNFINISHED))


def _lock(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":  # SQLite: BEGIN IMMEDIATE serializes writers already
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})


@dataclass
class _Turn:
    running: int  # admitted, unfinished
    last: tuple[datetime, int]  # last admission (this pass's admissions numbered after every stored one)
    oldest: str  # its oldest waiting job's id (ids sort by creation time)

    def key(self) -> tuple[int, tuple[datetime, int], str]:
        return self.running, self.last, self.oldest


def admit(session: Session, limit: int) -> list[Admission]:
    """Admit waiting jobs in turn until ``limit`` admitted jobs are unfinished; the caller's transaction
    commits them (and must send their messages only after it did)."""
    _lock(session)
    running: dict[str, int] = dict(
        session.execute(select(Job.org_id, func.count()).where(in_flight()).group_by(Job.org_id)).all()
    )
    room = limit - sum(running.values())
    if room <= 0:
        return []
    oldest: dict[str, str] = dict(
        session.execute(select(Job.org_id, func.min(Job.id)).where(waiting()).group_by(Job.org_id)).all()
    )
    if not oldest:
        return []
    last: dict[str, datetime | None] = dict(
        session.execute(
            select(Organization.id, Organization.last_admitted_at).where(Organization.id.in_(oldest))
        ).all()
    )
    turns = {
        org: _Turn(running.get(org, 0), (last.get(org) or NEVER, 0), first) for org, first in oldest.items()
    }
    out: list[Admission] = []
    while room > 0 and turns:
        org = min(turns, key=lambda o: turns[o].key())
        job = session.execute(
            select(Job.id, Job.status).where(waiting(), Job.org_id == org).order_by(Job.id).limit(1)
        ).first()
        if job is None:
            del turns[org]
            continue
        now = utcnow()
        res = session.execute(
            update(Job)
            .where(Job.id == job.id, waiting())
            .values(admitted_at=now, heartbeat_at=now)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            continue  # cancelled or claimed in between (PostgreSQL): the next read no longer sees it
        session.execute(
            update(Organization)
            .where(Organization.id == org)
            .values(last_admitted_at=now)
            .execution_options(synchronize_session=False)
        )
        task = queue.START if job.status == JobStatus.VALIDATING_FILES else queue.RESUME
        out.append(Admission(job.id, org, task, now))
        room -= 1
        turns[org].running += 1
        turns[org].last = (now, len(out))
    return out


def _give_back(admission: Admission) -> None:
    """The message could not be sent: the job waits again, unless a worker touched it in the meantime (a
    claim, heartbeat or hand-off moves ``heartbeat_at``, which admission set)."""
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(
                Job.id == admission.job_id,
                Job.admitted_at == admission.admitted_at,
                Job.heartbeat_at == admission.admitted_at,
                Job.claimed_by.is_(None),
            )
            .values(admitted_at=None)
            .execution_options(synchronize_session=False)
        )


def dispatch(settings: Settings | None = None) -> list[str]:
    """Admit waiting jobs fairly while the workers have room and send their messages; returns the ids sent.

    Safe to call from any process at any time. A broker failure ends this pass (the jobs not sent wait again
    and the next call retries them); database errors propagate to the caller.
    """
    settings = settings or get_settings()
    with session_scope() as s:
        admitted = admit(s, capacity(settings))
    sent: list[str] = []
    for i, a in enumerate(admitted):
        try:
            queue.enqueue(a.task, a.job_id)
        except Exception as exc:  # any broker failure: these jobs wait again, the next dispatch retries
            log.warning(
                "could not send %s of job %s (%s); it waits for the next dispatch", a.task, a.job_id, exc
            )
            for later in admitted[i:]:
                _give_back(later)
            break
        log.info("admitted job %s of %s (%s)", a.job_id, a.org_id, a.task)
        sent.append(a.job_id)
    return sent
