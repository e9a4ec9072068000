"""api/deps.py's ``read_db``: the poll path's reads on kept connections (``models.db.read_kept``), one per
reader thread on PostgreSQL, revalidated after a disconnect."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, create_engine, text

from api.deps import read_db
from models.db import read_kept
from tests.api.server import PG_ADMIN_URL
from tests.utils.databases import database


@pytest.fixture
def postgres(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with database("postgres", monkeypatch) as kind:
        yield kind


def _backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


@pytest.mark.postgres
def test_reads_keep_their_connection_and_survive_its_loss(postgres: str, own_readers: None) -> None:
    del postgres, own_readers
    first = asyncio.run(read_db(_backend_pid))
    # one read at a time goes to the same reader thread, on the same connection: no checkout, no ping
    assert asyncio.run(read_db(_backend_pid)) == first
    admin = create_engine(PG_ADMIN_URL)
    try:
        with admin.connect() as conn:  # the server drops it (as a restart or an idle timeout would)
            assert conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first}).scalar_one()
    finally:
        admin.dispose()
    again = asyncio.run(read_db(_backend_pid))  # the lost connection is replaced, the read answered
    assert again != first
    assert asyncio.run(read_db(_backend_pid)) == again


def test_a_sqlite_read_runs_on_the_callers_kept_connection(migrated_home: Path) -> None:
    del migrated_home
    conns = [read_kept(lambda conn: conn) for _ in range(2)]
    assert conns[0] is conns[1] and asyncio.run(read_db(lambda conn: conn)) is conns[0]
