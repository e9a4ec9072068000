"""Engine and sessions for the configured database (SQLite in embedded mode, PostgreSQL otherwise).

SQLite gets WAL (readers never block the writer), a busy timeout (writers queue instead of failing) and
foreign keys. pysqlite's own transaction handling is switched off so that we emit BEGIN ourselves, which
makes savepoints (``session.begin_nested()``) work and lets a transaction start as ``BEGIN IMMEDIATE``: a
deferred transaction that reads and then writes fails at once with "database is locked" when another writer
got in between (SQLite cannot upgrade its stale snapshot), while an immediate one waits for the busy timeout.
Sessions are therefore immediate by default; ``new_session(readonly=True)`` uses a deferred BEGIN so that
read-only requests do not queue behind writers.

``read_connection()`` is the poll path's: a Core connection of a second engine in autocommit mode, for reads
of one statement each (one statement reads one snapshot by itself, so no BEGIN/ROLLBACK round trips and no
ORM session are paid per request). ``reads_block_briefly()``: SQLite reads are local and short enough to run
on the event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from tunegate.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_READ_BUSY_TIMEOUT_MS = 1_000


def normalize_url(url: str) -> str:
    """Use psycopg 3 for bare ``postgresql://`` URLs (psycopg2 is not a dependency)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN (see _sqlite_on_begin)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _sqlite_reader_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # ``read_connection`` runs on the API's event loop with SQLite (api.deps.read_db): a WAL reader only
    # waits in rare moments (another process recovering or truncating the WAL), and then not for long.
    dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_READ_BUSY_TIMEOUT_MS}")


def _sqlite_on_begin(conn: Any) -> None:
    mode = "DEFERRED" if conn.get_execution_options().get("tunegate_readonly") else "IMMEDIATE"
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, autocommit: bool = False) -> Engine:
    """``autocommit``: every statement is its own transaction (SQLite: no BEGIN is emitted; PostgreSQL:
    psycopg's autocommit), for ``read_connection``."""
    url = normalize_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_on_connect)
        if autocommit:
            event.listen(engine, "connect", _sqlite_reader_on_connect)
        else:
            event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    if autocommit:
        return create_engine(
            url, pool_pre_ping=True, pool_size=READERS, max_overflow=READERS, isolation_level="AUTOCOMMIT"
        )
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


# PostgreSQL readers at once per API process (``api.deps.read_db``, one worker thread each): the read
# engine's pool holds this many connections (and as many again for ``read_connection`` callers outside it).
READERS = 4
_ENGINES: dict[str, Engine] = {}
_READ_ENGINES: dict[str, Engine] = {}


def get_engine() -> Engine:
    """The engine of the configured database (one per URL per process)."""
    settings = get_settings()
    url = settings.db_url
    if url not in _ENGINES:
        if url.startswith("sqlite"):
            settings.home_dir.mkdir(parents=True, exist_ok=True)
        _ENGINES[url] = make_engine(url)
    return _ENGINES[url]


def reset_engine() -> None:
    """Dispose every cached engine (tests switching databases, forked workers)."""
    for engines in (_ENGINES, _READ_ENGINES):
        while engines:
            engines.popitem()[1].dispose()


def reads_block_briefly() -> bool:
    """True for SQLite: a read of one statement is a few dozen microseconds of in-process work that never
    waits for a writer (WAL), cheaper than the thread hop and GIL hand-offs that would move it off the
    event loop. PostgreSQL reads wait on the network, so they run in worker threads."""
    return get_settings().db_url.startswith("sqlite")


_THREAD = threading.local()  # SQLite: each thread's read connection, kept open


def read_connection() -> AbstractContextManager[Connection]:
    """A connection in autocommit mode for reads of ONE statement each (the poll path): never write with
    it, and never rely on two statements seeing the same snapshot. PostgreSQL: from the read engine's pool
    (pre-pinged). SQLite: the calling thread's own, kept open (nothing goes stale in-process, and a pool
    checkout and return cost as much as the read)."""
    url = get_settings().db_url
    engine = _READ_ENGINES.get(url)
    if engine is None:
        get_engine()  # creates the home directory of an embedded database
        engine = _READ_ENGINES[url] = make_engine(url, autocommit=True)
    if engine.dialect.name != "sqlite":
        return engine.connect()
    conn: Connection | None = getattr(_THREAD, "sqlite_reader", None)
    if conn is None or conn.engine is not engine or conn.invalidated:
        if conn is not None:
            conn.close()
        conn = _THREAD.sqlite_reader = engine.connect()
    return nullcontext(conn)


def new_session(*, readonly: bool = False) -> Session:
    """A session on the configured database; ``readonly`` sessions must not write (SQLite: deferred BEGIN)."""
    engine = get_engine()
    bind = engine.execution_options(tunegate_readonly=True) if readonly else engine
    return sessionmaker(bind=bind, expire_on_commit=False)()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
