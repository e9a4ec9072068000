"""models/prepared.py: a prepared read returns what ``conn.execute`` returns for the same statement (equal
values of equal types, on SQLite and PostgreSQL), fails with the same SQLAlchemy exception, and a lost
connection is still replaced by ``models.db.read_kept``'s retry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from sqlalchemy import (
    Connection,
    Engine,
    String,
    bindparam,
    column,
    create_engine,
    event,
    select,
    table,
    text,
)
from sqlalchemy.exc import DBAPIError

from api.deps import read_db
from api.services import crud
from models.db import read_connection, read_kept, session_scope
from models.prepared import PreparedRead
from models.tables import Job, JobEvent, Organization
from tests.api.server import PG_ADMIN_URL

WHEN = datetime(2026, 12, 8, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


def _seed() -> tuple[str, str, str, list[str]]:
    """An organization with a job of every column set (non-ASCII text, nested JSON, datetimes), one of
    NULLs and empty values, and events of the first: (org id, full job, bare job, event ids oldest first)."""
    with session_scope() as s:
        org = Organization(name=f"o-{uuid.uuid4().hex[:12]}", policy={})
        s.add(org)
        s.flush()
        full = Job(
            org_id=org.id,
            model="smollm2-135m",
            training_file="file-ü",
            validation_file="file-v",
            status="running",
            hyperparameters={"n_epochs": 3, "learning_rate_multiplier": 0.5, "batch_size": "auto"},
            method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
            suffix="naïve-模型",
            seed=42,
            metadata_={"team": "ŝtelo", "emoji": "🚀", "quote": 'a "b"'},
            safety={"screen": {"enabled": True, "threshold": 0.25}, "list": [1, 2.5, None, "x"]},
            error={"code": "gate_blocked", "message": "blocked — erosion", "param": None},
            fine_tuned_model="ft:smollm2:ü",
            trained_tokens=123456789,
            result_files=["file-a", "file-b"],
            created_at=WHEN,
            finished_at=WHEN + timedelta(minutes=5),
            cancel_requested=True,
            pause_requested=True,
            stage="train",
            progress=0.375,
            claimed_by="worker-1",
            heartbeat_at=WHEN + timedelta(seconds=1),
            admitted_at=WHEN - timedelta(days=1),
            released=True,
            repair={"repaired": True, "method": "mix", "tried": ["a", "b"], "reason": "ok"},
        )
        bare = Job(org_id=org.id, model="m", training_file="file-x", created_at=WHEN + timedelta(hours=1))
        s.add_all([full, bare])
        s.flush()
        events = [
            JobEvent(job_id=full.id, seq=1, message="started", data={}, created_at=WHEN),
            JobEvent(
                job_id=full.id,
                seq=2,
                level="warn",
                type="metrics",
                message="Schritt 10 — ✓ done",
                data={"stage": "train", "progress": 0.5, "step": 10, "loss": 1.25, "nested": {"ü": [True]}},
                created_at=WHEN + timedelta(seconds=30),
            ),
            JobEvent(
                job_id=full.id,
                seq=3,
                message="x",
                data={"stage": "train", "progress": 1},
                created_at=WHEN.astimezone(UTC) + timedelta(minutes=1),
            ),
        ]
        s.add_all(events)
        s.flush()
        return org.id, full.id, bare.id, [e.id for e in events]


def _typed(value: Any) -> Any:
    """``value`` with the type of every part of it spelled out (``1 == 1.0 == True`` in Python)."""
    if isinstance(value, dict):
        return ("dict", [(_typed(k), _typed(v)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        return (type(value).__name__, [_typed(v) for v in value])
    if isinstance(value, datetime):
        return ("datetime", value.isoformat(), str(value.tzinfo))
    return (type(value).__name__, value)


def _both(read: PreparedRead, params: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """The prepared read's rows and ``conn.execute``'s, typed (``_typed``), on the same kept connection."""

    def run(conn: Connection) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
        return read.rows(conn, params), conn.execute(read.stmt, params).all()

    prepared, executed = read_kept(run)
    return [_typed(list(r)) for r in prepared], [_typed(list(r)) for r in executed]


def test_prepared_rows_are_executed_rows(any_db: str) -> None:
    org_id, full, bare, events = _seed()
    cases: list[tuple[PreparedRead, dict[str, Any]]] = [
        (crud._READ_JOB, {"job_id": full, "org_id": org_id}),
        (crud._READ_JOB, {"job_id": bare, "org_id": org_id}),
        (crud._READ_JOB, {"job_id": full, "org_id": "org-other"}),  # no row
        (crud._READ_JOB_PAGE[False], {"org_id": org_id, "limit": 21, "after": None}),
        (crud._READ_JOB_PAGE[False], {"org_id": org_id, "limit": 1}),
        (crud._READ_JOB_PAGE[True], {"org_id": org_id, "limit": 21, "after": bare}),
        (crud._READ_EVENT_PAGE[False], {"job_id": full, "org_id": org_id, "after": None, "limit": 21}),
        (crud._READ_EVENT_PAGE[False], {"job_id": bare, "org_id": org_id, "after": None, "limit": 21}),
        (crud._READ_EVENT_PAGE[True], {"job_id": full, "org_id": org_id, "after": events[2], "limit": 2}),
        (crud._READ_EVENT_PAGE[True], {"job_id": full, "org_id": org_id, "after": "ftevent-x", "limit": 2}),
        (
            crud._READ_EVENT_PAGE[True],
            {"job_id": "ftjob-x", "org_id": org_id, "after": events[0], "limit": 2},
        ),
        (crud._READ_RECENT_EVENTS, {"job_id": full}),
    ]
    seen_rows = 0
    for read, params in cases:
        prepared, executed = _both(read, params)
        assert prepared == executed, (read.stmt, params)
        seen_rows += len(prepared)
        assert read._plans, "the prepared read ran past conn.execute"
    assert seen_rows == 16
    # what the routes read: the crud functions on the prepared reads
    job = read_kept(partial(crud.job_row, org_id=org_id, job_id=full))
    assert (
        job.created_at == WHEN
        and job.created_at.tzinfo == UTC
        and job.metadata_
        == {
            "team": "ŝtelo",
            "emoji": "🚀",
            "quote": 'a "b"',
        }
    )
    assert job.cancel_requested is True and job.progress == 0.375 and job.suffix == "naïve-模型"
    assert read_kept(partial(crud.job_row, org_id=org_id, job_id=bare)).metadata_ is None
    page, more = read_kept(partial(crud.job_page, org_id=org_id, after=None, limit=1, metadata={}))
    assert [j.id for j in page] == [bare] and more
    filtered, _ = read_kept(
        partial(crud.job_page, org_id=org_id, after=bare, limit=5, metadata={"emoji": "🚀"})
    )
    assert [j.id for j in filtered] == [full]  # (a filtered page: a plain execute)
    listed, more = read_kept(partial(crud.event_page, org_id=org_id, job_id=full, after=events[2], limit=1))
    assert [e.id for e in listed] == [events[1]] and more and listed[0].data["nested"] == {"ü": [True]}
    points = read_kept(partial(crud.progress_points, job_id=full, stage="train"))
    assert points == [(WHEN.timestamp() + 60, 1.0), (WHEN.timestamp() + 30, 0.5)]


def test_listeners_see_the_statement(any_db: str) -> None:
    """A connection with execution listeners (a test counting statements) reads through ``conn.execute``."""
    del any_db
    org_id, full, _bare, _events = _seed()
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        job = read_kept(partial(crud.job_row, org_id=org_id, job_id=full))
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert job.id == full and len(seen) == 1 and "FROM jobs" in seen[0]


def _error_of(read: Callable[[], object]) -> DBAPIError:
    with pytest.raises(DBAPIError) as info:
        read()
    return info.value


def test_a_driver_error_is_sqlalchemys(any_db: str) -> None:
    missing = table("no_such_table", column("id", String))
    reads: list[tuple[PreparedRead, dict[str, Any]]] = [
        (PreparedRead(select(missing.c.id).where(missing.c.id == bindparam("x"))), {"x": "a"})
    ]
    if any_db == "postgres":  # (SQLite reads a negative LIMIT as none)
        reads.append((crud._READ_JOB_PAGE[False], {"org_id": "org-x", "limit": -1}))  # a DataError
    for read, params in reads:
        with read_connection() as conn:
            executed = _error_of(partial(conn.execute, read.stmt, params))
        with read_connection() as conn:
            prepared = _error_of(partial(read.rows, conn, params))
            assert not conn.invalidated
        assert type(prepared) is type(executed) and type(prepared.orig) is type(executed.orig)
        assert prepared.statement == executed.statement and not prepared.connection_invalidated


def _lose(conn: Connection) -> None:
    """Break ``conn`` as a server restart would: PostgreSQL terminates its backend; SQLite's is closed."""
    if conn.dialect.name == "sqlite":
        dbapi_conn = conn.connection.dbapi_connection
        assert dbapi_conn is not None
        dbapi_conn.close()
        return
    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as other:
            assert other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
    finally:
        admin.dispose()


def test_a_lost_connection_is_invalidated_and_the_read_retried(any_db: str, own_readers: None) -> None:
    del own_readers
    org_id, full, _bare, _events = _seed()
    with read_connection() as conn:
        _lose(conn)
        lost = _error_of(lambda: crud._READ_JOB.rows(conn, {"job_id": full, "org_id": org_id}))
        assert lost.connection_invalidated and conn.invalidated
        expected = "ProgrammingError" if any_db == "sqlite" else "OperationalError"
        assert type(lost).__name__ == expected  # as conn.execute raises it (sqlalchemy.exc's)
    first = asyncio.run(read_db(lambda conn: conn))
    asyncio.run(read_db(_lose))
    job = asyncio.run(read_db(partial(crud.job_row, org_id=org_id, job_id=full)))  # read_kept's retry
    assert job.id == full
    again = asyncio.run(read_db(lambda conn: conn))
    assert again is not first and not again.invalidated
