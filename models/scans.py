"""Safety scans' rows (``models.tables.SafetyScan``): create and read them (scoped to one organization, so
another tenant's scan answers exactly like a missing one), claim, heartbeat and finish them (the worker,
``worker/scan.py``), list them (the console), and find the completed scans whose scores a job may reuse.

    queued ──claim──> running ──complete──> completed
                         │ └──fail──> failed
                         └──release (a transient error; the task retries)──> queued

A claim is one conditional ``UPDATE`` (as a job stage's, ``worker/claims.py``): a second copy of the task's
message finds the scan running with a fresh heartbeat and does nothing; a scan whose worker stopped beating
for ``stale_after_s`` may be claimed again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.policy import Policy
from models.tables import Job, SafetyScan
from tunegate.errors import JobError, NotFound

STATUSES = ("queued", "running", "completed", "failed")


def create(session: Session, *, org_id: str, file_id: str, model: str, policy: Policy) -> SafetyScan:
    row = SafetyScan(
        org_id=org_id, file_id=file_id, model=model, policy=policy.copy(), status="queued", progress=0.0
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, *, org_id: str, scan_id: str) -> SafetyScan:
    row = session.scalar(select(SafetyScan).where(SafetyScan.id == scan_id, SafetyScan.org_id == org_id))
    if row is None:
        raise NotFound(f"No such safety scan: {scan_id}", param="scan_id")
    return row


def page(
    session: Session, *, org_id: str, after: str | None, limit: int, file_id: str | None = None
) -> tuple[list[SafetyScan], bool]:
    """The organization's scans, newest first (``after``: the last scan id the client saw)."""
    stmt = select(SafetyScan).where(SafetyScan.org_id == org_id)
    if file_id:
        stmt = stmt.where(SafetyScan.file_id == file_id)
    if after:
        stmt = stmt.where(SafetyScan.id < after)
    rows = list(session.scalars(stmt.order_by(SafetyScan.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


@dataclass(frozen=True)
class ScanFilter:
    org_id: str | None = None
    status: str | None = None


def search(session: Session, flt: ScanFilter, *, offset: int, limit: int) -> tuple[list[SafetyScan], int]:
    """Every organization's scans (the console), newest first, and how many match."""
    where = []
    if flt.org_id:
        where.append(SafetyScan.org_id == flt.org_id)
    if flt.status:
        where.append(SafetyScan.status == flt.status)
    total = session.scalar(select(func.count()).select_from(SafetyScan).where(*where)) or 0
    rows = session.scalars(
        select(SafetyScan).where(*where).order_by(SafetyScan.id.desc()).offset(offset).limit(limit)
    )
    return list(rows), int(total)


def claim(session: Session, scan_id: str, *, worker: str, stale_after_s: float) -> SafetyScan | None:
    """Take a queued scan (or a running one whose worker stopped beating) for ``worker``; None when it is
    finished, gone, or another worker holds it. The row's ``claimed_by`` is the holder's token."""
    now = utcnow()
    stale = now - timedelta(seconds=stale_after_s)
    token = f"{worker}:{uuid.uuid4().hex[:12]}"
    claimable = or_(
        SafetyScan.status == "queued",
        and_(
            SafetyScan.status == "running",
            or_(SafetyScan.heartbeat_at.is_(None), SafetyScan.heartbeat_at < stale),
        ),
    )
    res = session.execute(
        update(SafetyScan)
        .where(SafetyScan.id == scan_id, claimable)
        .values(
            status="running",
            claimed_by=token,
            heartbeat_at=now,
            attempt=SafetyScan.attempt + 1,
            started_at=func.coalesce(SafetyScan.started_at, now),
        )
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return None
    return session.get(SafetyScan, scan_id, populate_existing=True)


def status_of(session: Session, scan_id: str) -> str | None:
    return session.scalar(select(SafetyScan.status).where(SafetyScan.id == scan_id))


def _held(scan_id: str, token: str) -> Any:
    return and_(SafetyScan.id == scan_id, SafetyScan.claimed_by == token, SafetyScan.status == "running")


def beat(session: Session, scan_id: str, *, token: str, progress: float | None = None) -> bool:
    """Refresh the holder's heartbeat and progress (which only grows); False when the claim was lost."""
    stmt = update(SafetyScan).where(_held(scan_id, token)).values(heartbeat_at=utcnow())
    if progress is not None:
        stmt = stmt.values(
            progress=case((SafetyScan.progress < progress, progress), else_=SafetyScan.progress)
        )
    res = session.execute(stmt.execution_options(synchronize_session=False))
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def complete(session: Session, scan_id: str, *, token: str, **fields: Any) -> bool:
    """The holder's scan is ``completed`` with ``fields`` (verdict, summary, mitigation, ...)."""
    res = session.execute(
        update(SafetyScan)
        .where(_held(scan_id, token))
        .values(status="completed", progress=1.0, completed_at=utcnow(), claimed_by=None, **fields)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def fail(session: Session, scan_id: str, *, token: str | None, error: JobError) -> bool:
    """The scan is ``failed`` with ``error`` ({code, message, param}); ``token`` None: whoever holds it (a
    scan that could not be queued, or one given up after repeated transient errors)."""
    active = and_(SafetyScan.id == scan_id, SafetyScan.status.in_(("queued", "running")))
    where = _held(scan_id, token) if token else active
    res = session.execute(
        update(SafetyScan)
        .where(where)
        .values(status="failed", completed_at=utcnow(), claimed_by=None, error=error)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def release(session: Session, scan_id: str, *, token: str) -> bool:
    """Back to ``queued`` (a transient error: the task is retried and claims it again)."""
    res = session.execute(
        update(SafetyScan)
        .where(_held(scan_id, token))
        .values(status="queued", claimed_by=None)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Reusable:
    scan_id: str
    score_key: str
    score_dir: str


def completed_for_job(session: Session, *, job_id: str) -> list[Reusable]:
    """The completed scans of the job's organization on the job's training file and base model, newest
    first: the candidates whose scores the job's score stage may reuse (it compares ``score_key``)."""
    stmt = (
        select(SafetyScan.id, SafetyScan.score_key, SafetyScan.score_dir)
        .join(Job, and_(Job.org_id == SafetyScan.org_id, Job.training_file == SafetyScan.file_id))
        .where(
            Job.id == job_id,
            SafetyScan.model == Job.model,
            SafetyScan.status == "completed",
            SafetyScan.score_key.is_not(None),
            SafetyScan.score_dir.is_not(None),
        )
        .order_by(SafetyScan.completed_at.desc(), SafetyScan.id.desc())
    )
    return [Reusable(str(i), str(k), str(d)) for i, k, d in session.execute(stmt)]
