"""Database access for the routes (keyword-only functions). Every lookup is scoped to one organization,
so another tenant's id answers exactly like a missing one.

The poll path (``job_row``, ``job_page``, ``event_page``, ``progress_points``) reads with ONE prebuilt Core
statement on a connection (``api.deps.read_db``), no session, run as a ``models.prepared.PreparedRead`` (past
SQLAlchemy's per-execution machinery, which cost more CPU than the read itself), into plain named tuples
whose fields are named like the ORM's attributes (``row.metadata_``): ``JobRow`` and ``EventRow``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    Label,
    Select,
    and_,
    bindparam,
    exists,
    func,
    literal,
    select,
)
from sqlalchemy.orm import Session

from models.base import utcnow
from models.files import OPEN_UPLOAD, UNFINISHED
from models.policy import Policy
from models.prepared import PreparedRead
from models.records import Hyperparameters, JobMethod, RepairSummary
from models.tables import Checkpoint, File, Job, JobEvent, Organization, Upload, UploadPart
from tunegate.errors import JobError, NotFound
from tunegate.jsontypes import JsonObject


def _live_file() -> ColumnElement[bool]:
    """Not deleted, and not expired (the reaper deletes an expired file a little later)."""
    return File.deleted_at.is_(None) & (File.expires_at.is_(None) | (File.expires_at > utcnow()))


def get_file(session: Session, *, org: Organization, file_id: str) -> File:
    row = session.scalar(select(File).where(File.id == file_id, File.org_id == org.id, _live_file()))
    if row is None:
        raise NotFound(f"No such File object: {file_id}", param="file_id")
    return row


def get_job(session: Session, *, org: Organization, job_id: str, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.org_id == org.id)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        raise _no_such_job(job_id)
    return row


def page_by_id(
    session: Session, stmt: Select[Any], *, id_col: Any, after: str | None, limit: int, desc: bool = True
) -> tuple[list[Any], bool]:
    """Cursor page over time-ordered ids: ``after`` is the last id the client saw."""
    if after:
        stmt = stmt.where(id_col < after if desc else id_col > after)
    stmt = stmt.order_by(id_col.desc() if desc else id_col.asc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    return rows[:limit], len(rows) > limit


def list_files(
    session: Session, *, org: Organization, after: str | None, limit: int, order: str, purpose: str | None
) -> tuple[list[File], bool]:
    stmt = select(File).where(File.org_id == org.id, _live_file())
    if purpose:
        stmt = stmt.where(File.purpose == purpose)
    return page_by_id(session, stmt, id_col=File.id, after=after, limit=limit, desc=order == "desc")


def _labelled(entity: type[Any], names: tuple[str, ...]) -> list[Label[Any]]:
    """Columns labelled with their attribute names, so a Core row reads like the ORM object."""
    return [getattr(entity, name).label(name) for name in names]


class JobRow(NamedTuple):
    """A job as the poll path reads it: what ``api.services.views.job_out`` and ``models.presence`` read, and
    no more (the worker's other bookkeeping columns stay unread); typed as the ORM's attributes. A plain
    named tuple, not SQLAlchemy's ``Row``: rendering a job reads some thirty fields, and a ``Row``'s
    attribute read costs about 20 times a tuple's (about 40 us a job here; a list page renders 20)."""

    id: str
    created_at: datetime
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: datetime | None
    hyperparameters: Hyperparameters
    model: str
    org_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    metadata_: dict[str, str] | None
    method: JobMethod
    safety: Policy
    stage: str | None
    progress: float
    cancel_requested: bool
    released: bool
    suffix: str | None
    pause_requested: bool
    repair: RepairSummary | None
    admitted_at: datetime | None  # what it waits on (models/presence.py)
    claimed_by: str | None
    heartbeat_at: datetime | None


class EventRow(NamedTuple):
    """An event as the poll path reads it (what ``api.services.views.event_out`` reads); see ``JobRow``."""

    id: str
    created_at: datetime
    level: str
    message: str
    data: JsonObject
    type: str


JOB_FIELDS = JobRow._fields
EVENT_FIELDS = EventRow._fields
# Built once: a statement's columns are coerced when it is built, which costs more than running it.
_JOBS = select(*_labelled(Job, JOB_FIELDS))
_JOB_BY_ID = _JOBS.where(Job.id == bindparam("job_id"), Job.org_id == bindparam("org_id"))
_ORG_JOBS = _JOBS.where(Job.org_id == bindparam("org_id")).order_by(Job.id.desc()).limit(bindparam("limit"))
_JOB_PAGE = {False: _ORG_JOBS, True: _ORG_JOBS.where(Job.id < bindparam("after"))}  # by whether ``after``
_READ_JOB = PreparedRead(_JOB_BY_ID)
_READ_JOB_PAGE = {after: PreparedRead(stmt) for after, stmt in _JOB_PAGE.items()}


def _no_such_job(job_id: str) -> NotFound:
    return NotFound(f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id")


def job_row(conn: Connection, *, org_id: str, job_id: str) -> JobRow:
    rows = _READ_JOB.rows(conn, {"job_id": job_id, "org_id": org_id})
    if not rows:
        raise _no_such_job(job_id)
    return JobRow._make(rows[0])


def job_page(
    conn: Connection, *, org_id: str, after: str | None, limit: int, metadata: dict[str, str]
) -> tuple[list[JobRow], bool]:
    """Newest first; ``after`` is the last job id the client saw; ``metadata`` pairs must all match (a
    filtered list's SQL depends on its keys: it runs as a plain ``conn.execute``, the others prepared)."""
    params = {"org_id": org_id, "limit": limit + 1, "after": after}
    found: Sequence[Sequence[Any]]
    if metadata:
        stmt = _JOB_PAGE[bool(after)]
        sqlite = conn.dialect.name == "sqlite"
        for key, value in metadata.items():
            stmt = stmt.where(_metadata_equals(key, value, sqlite=sqlite))
        found = conn.execute(stmt, params).all()
    else:
        found = _READ_JOB_PAGE[bool(after)].rows(conn, params)
    rows = [JobRow._make(r) for r in found]
    return rows[:limit], len(rows) > limit


def _metadata_equals(key: str, value: str, *, sqlite: bool) -> ColumnElement[bool]:
    """``metadata[key] == value`` for any key. PostgreSQL binds the key (``->>``); SQLite's JSON paths
    cannot quote a key holding ``"`` (it silently matched nothing), so there ``json_each`` compares pairs."""
    if not sqlite:
        same: ColumnElement[bool] = Job.metadata_[key].as_string() == value
        return same
    pairs = func.json_each(Job.metadata_).table_valued("key", "value")
    return exists(select(literal(1)).select_from(pairs).where(pairs.c.key == key, pairs.c.value == value))


def _event_page_statement(*, after: bool) -> Select[Any]:
    """The job (of this organization) left-joined to its page of events, newest first; with ``after``, the
    events before that one, and its sequence number as ``after_seq`` (NULL: not an event of this job)."""
    after_seq: ColumnElement[Any] = literal(None)
    on = JobEvent.job_id == Job.id
    if after:
        after_seq = (
            select(JobEvent.seq)
            .where(JobEvent.job_id == bindparam("job_id"), JobEvent.id == bindparam("after"))
            .scalar_subquery()
        )
        on = and_(on, JobEvent.seq < after_seq)
    return (
        select(after_seq.label("after_seq"), *_labelled(JobEvent, EVENT_FIELDS))
        .select_from(Job)
        .outerjoin(JobEvent, on)
        .where(Job.id == bindparam("job_id"), Job.org_id == bindparam("org_id"))
        .order_by(JobEvent.seq.desc())
        .limit(bindparam("limit"))
    )


_EVENT_PAGE = {after: _event_page_statement(after=after) for after in (False, True)}
_READ_EVENT_PAGE = {after: PreparedRead(stmt) for after, stmt in _EVENT_PAGE.items()}


def event_page(
    conn: Connection, *, org_id: str, job_id: str, after: str | None, limit: int
) -> tuple[list[EventRow], bool]:
    """Newest first; ``after`` is an event id of this job. One statement, so no row means no such job,
    and a row without an event id an empty page (or, with an ``after`` this job lacks, an unknown cursor)."""
    params = {"job_id": job_id, "org_id": org_id, "after": after, "limit": limit + 1}
    rows = _READ_EVENT_PAGE[bool(after)].rows(conn, params)
    if not rows:
        raise _no_such_job(job_id)
    if after and rows[0][0] is None:  # [0]: after_seq
        raise NotFound(f"No such event for job {job_id}: {after}", param="after")
    events = [EventRow._make(r[1:]) for r in rows if r[1] is not None]  # [1]: the event's id
    return events[:limit], len(events) > limit


PROGRESS_WINDOW = 50  # the newest events looked at for the running stage's speed


_RECENT_EVENTS = (
    select(JobEvent.created_at, JobEvent.data)
    .where(JobEvent.job_id == bindparam("job_id"))
    .order_by(JobEvent.seq.desc())
    .limit(PROGRESS_WINDOW)
)
_READ_RECENT_EVENTS = PreparedRead(_RECENT_EVENTS)


def progress_points(conn: Connection, *, job_id: str, stage: str | None) -> list[tuple[float, float]]:
    """(unix time, overall progress) of the newest events of the job's current stage."""
    rows = _READ_RECENT_EVENTS.rows(conn, {"job_id": job_id})
    points = []
    for created_at, data in rows:
        progress = (data or {}).get("progress")
        if (data or {}).get("stage") == stage and isinstance(progress, int | float):
            points.append((created_at.timestamp(), float(progress)))
    return points


def list_checkpoints(
    session: Session, *, job: Job, after: str | None, limit: int
) -> tuple[list[Checkpoint], bool]:
    """Newest (highest step) first; ``after`` is a checkpoint id of this job."""
    stmt = select(Checkpoint).where(Checkpoint.job_id == job.id)
    if after:
        step = session.scalar(
            select(Checkpoint.step_number).where(Checkpoint.job_id == job.id, Checkpoint.id == after)
        )
        if step is None:
            raise NotFound(f"No such checkpoint for job {job.id}: {after}", param="after")
        stmt = stmt.where(Checkpoint.step_number < step)
    rows = list(session.scalars(stmt.order_by(Checkpoint.step_number.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def live_storage_keys(session: Session) -> set[str]:
    """Keys a row still needs: live files, deleted files an unfinished job trains on, and the parts of
    uploads not yet completed."""
    live = set(session.scalars(select(File.storage_key).where(File.deleted_at.is_(None))))
    used = (
        select(Job.training_file)
        .where(Job.status.in_(UNFINISHED))
        .union(
            select(Job.validation_file).where(Job.status.in_(UNFINISHED), Job.validation_file.is_not(None))
        )
    )
    live.update(session.scalars(select(File.storage_key).where(File.id.in_(used))))
    live.update(
        session.scalars(select(UploadPart.storage_key).join(Upload).where(Upload.status.in_(OPEN_UPLOAD)))
    )
    return live


def lock_org(session: Session, *, org_id: str) -> Organization:
    """The organization row, locked for this transaction (PostgreSQL: FOR UPDATE; SQLite: BEGIN IMMEDIATE
    already serializes writers)."""
    org = session.scalar(
        select(Organization)
        .where(Organization.id == org_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if org is None:
        raise NotFound(f"No such organization: {org_id}")
    return org


def stored_bytes(session: Session, *, org_id: str) -> int:
    """Bytes of the organization's live files and of the parts of its open uploads (what its storage
    quota counts)."""
    files = session.scalar(
        select(func.coalesce(func.sum(File.bytes), 0)).where(File.org_id == org_id, File.deleted_at.is_(None))
    )
    parts = session.scalar(
        select(func.coalesce(func.sum(UploadPart.bytes), 0))
        .join(Upload)
        .where(Upload.org_id == org_id, Upload.status.in_(OPEN_UPLOAD))
    )
    return int(files or 0) + int(parts or 0)


def released_jobs(session: Session, *, org: Organization) -> list[Job]:
    """Jobs whose fine-tuned model the organization has (released, and not deleted with models.delete)."""
    stmt = select(Job).where(
        Job.org_id == org.id,
        Job.released.is_(True),
        Job.fine_tuned_model.is_not(None),
        Job.model_deleted_at.is_(None),
        Job.revoked_at.is_(None),  # a revoked adapter is no longer a model anyone can use
    )
    return list(session.scalars(stmt.order_by(Job.id.desc())))


def released_model_job(session: Session, *, org: Organization, model: str) -> Job | None:
    """The organization's job whose released, not deleted, fine-tuned model is ``model`` (locked)."""
    stmt = select(Job).where(
        Job.org_id == org.id,
        Job.fine_tuned_model == model,
        Job.released.is_(True),
        Job.model_deleted_at.is_(None),
    )
    return session.scalar(stmt.with_for_update())


def get_checkpoint(session: Session, *, job: Job, checkpoint_id: str) -> Checkpoint:
    row = session.scalar(
        select(Checkpoint).where(Checkpoint.job_id == job.id, Checkpoint.id == checkpoint_id)
    )
    if row is None:
        raise NotFound(
            f"No such checkpoint for job {job.id}: {checkpoint_id}", param="checkpoint_id", code="not_found"
        )
    return row
