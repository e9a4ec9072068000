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
ORM session are paid per request); ``read_kept(read)`` runs a read on the calling thread's own such
connection, kept open (the API's poll reads: on the event loop with SQLite, on its reader threads with
PostgreSQL). ``reads_block_briefly()``: SQLite reads are local and short enough to run on the event loop.

Timeouts (``Settings.database_*``): a database that accepts connections but never answers must fail a
request, not hold it. PostgreSQL connections get libpq's ``connect_timeout`` (the handshake included) and a
server-side ``statement_timeout``; a server that does not even answer that (hung, or stopped) is caught on
the client: ``AnsweringConnection`` gives every wait for the server (a statement, a commit, the pool's ping)
``statement_timeout + ANSWER_GRACE_S`` seconds, then closes the connection, which SQLAlchemy sees as a
disconnect (dropped from the pool, ``OperationalError``: the API's 503). ``answer_within`` shortens both for a
block (``/healthz`` answers within its own deadline). Waiting for a pooled connection is bounded by the pool
timeout, SQLite's wait for another writer by the busy timeout.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.abc import PQGen
from psycopg.errors import _WaitTimeout  # psycopg's own "the wait's timeout expired" (internal, stable)
from sqlalchemy import URL, Connection, Engine, create_engine, event, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from tunegate.settings import Settings, get_settings

SQLITE_READ_BUSY_TIMEOUT_MS = 1_000
ANSWER_GRACE_S = 2.0  # past statement_timeout: the server's own cancellation arrives well within it
MIN_CONNECT_TIMEOUT_S = 2  # libpq's (a smaller connect_timeout counts as 2)

RV = TypeVar("RV")
log = logging.getLogger(__name__)
_DEADLINE: ContextVar[float | None] = ContextVar("tunegate_db_deadline", default=None)


def normalize_url(url: str) -> str:
    """Use psycopg 3 for bare ``postgresql://`` URLs (psycopg2 is not a dependency)."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


@contextmanager
def answer_within(seconds: float) -> Iterator[None]:
    """In this block (this thread or task), every wait for PostgreSQL ends ``seconds`` from now at the latest:
    a new connection's handshake (at least ``MIN_CONNECT_TIMEOUT_S``), the pool's ping, statements."""
    token = _DEADLINE.set(time.monotonic() + seconds)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _remaining() -> float | None:
    deadline = _DEADLINE.get()
    return None if deadline is None else max(0.05, deadline - time.monotonic())


class DatabaseNotAnswering(psycopg.OperationalError):
    """The server did not answer in time; the connection is closed (SQLAlchemy: a disconnect)."""


class AnsweringConnection(psycopg.Connection[Any]):
    """A psycopg connection that gives up on a server that does not answer (see the module docstring).

    Every network wait of psycopg's synchronous connection (statements, fetches, commit, rollback) goes
    through ``wait``; one that passes ``answer_timeout_s`` (or ``answer_within``'s deadline) closes the
    connection, since the protocol state is unknown mid-message, and raises ``DatabaseNotAnswering``."""

    answer_timeout_s: float | None = None

    def wait(self, gen: PQGen[RV], interval: float = 0.1, timeout: float | None = None) -> RV:
        limits = [t for t in (self.answer_timeout_s, _remaining()) if t is not None]
        if timeout is not None or not limits:
            return super().wait(gen, interval, timeout)
        limit = min(limits)
        try:
            return super().wait(gen, interval, limit)
        except _WaitTimeout:
            self.pgconn.finish()
            raise DatabaseNotAnswering(
                f"the database did not answer within {limit:.1f} s; the connection was closed"
            ) from None


def _pg_connector(settings: Settings, answer_timeout_s: float | None) -> Any:
    """The engine's ``do_connect`` hook: an ``AnsweringConnection`` with the connect timeout."""

    def connect(_dialect: Any, _record: Any, cargs: Any, cparams: dict[str, Any]) -> AnsweringConnection:
        seconds = settings.database_connect_timeout_s
        remaining = _remaining()
        if remaining is not None:
            seconds = min(seconds, remaining)
        params = {**cparams, "connect_timeout": max(MIN_CONNECT_TIMEOUT_S, math.ceil(seconds))}
        conn = AnsweringConnection.connect(*cargs, **params)
        conn.answer_timeout_s = answer_timeout_s
        return conn

    return connect


def _pg_options(url: URL, statement_timeout_s: float | None) -> dict[str, str]:
    """The URL's own ``options`` (e.g. a search_path) plus the statement timeout."""
    given = url.query.get("options")
    parts = [given] if isinstance(given, str) else list(given or ())
    if statement_timeout_s is not None:
        parts.append(f"-c statement_timeout={round(statement_timeout_s * 1000)}")
    return {"options": " ".join(parts)} if parts else {}


def _sqlite_on_connect(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy emits BEGIN (see _sqlite_on_begin)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def _sqlite_reader_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # ``read_connection`` runs on the API's event loop with SQLite (api.deps.read_db): a WAL reader only
    # waits in rare moments (another process recovering or truncating the WAL), and then not for long.
    dbapi_conn.execute(f"PRAGMA busy_timeout={SQLITE_READ_BUSY_TIMEOUT_MS}")


def _sqlite_on_begin(conn: Any) -> None:
    mode = "DEFERRED" if conn.get_execution_options().get("tunegate_readonly") else "IMMEDIATE"
    conn.exec_driver_sql(f"BEGIN {mode}")


def make_engine(url: str, *, autocommit: bool = False, statement_timeout: bool = True) -> Engine:
    """``autocommit``: every statement is its own transaction (SQLite: no BEGIN is emitted; PostgreSQL:
    psycopg's autocommit), for ``read_connection``. ``statement_timeout=False`` (the migrations, which may
    rewrite big tables): no statement timeout and no answer timeout, only the connect timeout."""
    settings = get_settings()
    url = normalize_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        busy_s = settings.database_busy_timeout_s
        file_db = bool(database) and database != ":memory:"  # (memory: one connection, no pool to wait on)
        pooled = {"pool_timeout": settings.database_pool_timeout_s} if file_db else {}
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_s},
            **pooled,
        )
        event.listen(engine, "connect", _sqlite_on_connect(round(busy_s * 1000)))
        if autocommit:
            event.listen(engine, "connect", _sqlite_reader_on_connect)
        else:
            event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    statement_s = settings.database_statement_timeout_s if statement_timeout else None
    sizes = (
        {"pool_size": READERS, "max_overflow": READERS, "isolation_level": "AUTOCOMMIT"}
        if autocommit
        else {"pool_size": 10, "max_overflow": 20}
    )
    engine = create_engine(
        url,
        pool_pre_ping=True,
        pool_timeout=settings.database_pool_timeout_s,
        connect_args=_pg_options(make_url(url), statement_s),
        **sizes,
    )
    if engine.dialect.driver == "psycopg":
        answer_s = statement_s + ANSWER_GRACE_S if statement_s is not None else None
        event.listen(engine, "do_connect", _pg_connector(settings, answer_s))
    return engine


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


_URL: tuple[Settings, str] | None = None  # the settings object and its db_url


def _db_url() -> str:
    """``Settings.db_url`` of the current settings, derived once per settings object (the poll path asks
    twice per request; deriving it builds the home directory's path each time)."""
    global _URL
    settings = get_settings()
    cached = _URL
    if cached is None or cached[0] is not settings:
        cached = _URL = (settings, settings.db_url)
    return cached[1]


def reads_block_briefly() -> bool:
    """True for SQLite: a read of one statement is a few dozen microseconds of in-process work that never
    waits for a writer (WAL), cheaper than the thread hop and GIL hand-offs that would move it off the
    event loop. PostgreSQL reads wait on the network, so they run in worker threads."""
    return _db_url().startswith("sqlite")


_THREAD = threading.local()  # each thread's kept read connection (SQLite: any thread; PostgreSQL: readers)


def _read_engine() -> Engine:
    url = _db_url()
    engine = _READ_ENGINES.get(url)
    if engine is None:
        get_engine()  # creates the home directory of an embedded database
        engine = _READ_ENGINES[url] = make_engine(url, autocommit=True)
    return engine


def read_connection() -> AbstractContextManager[Connection]:
    """A connection in autocommit mode for reads of ONE statement each (the poll path): never write with
    it, and never rely on two statements seeing the same snapshot. PostgreSQL: from the read engine's pool
    (pre-pinged). SQLite: the calling thread's own, kept open (nothing goes stale in-process, and a pool
    checkout and return cost as much as the read)."""
    engine = _read_engine()
    if engine.dialect.name != "sqlite":
        return engine.connect()
    return nullcontext(_kept_connection(engine)[0])


def _kept_connection(engine: Engine) -> tuple[Connection, bool]:
    """The calling thread's own read connection of ``engine``, kept open between reads, and whether it was
    opened now (a connection of another engine, or one closed or invalidated by a disconnect, is replaced)."""
    conn: Connection | None = getattr(_THREAD, "reader", None)
    if conn is not None and conn.engine is engine and not (conn.invalidated or conn.closed):
        return conn, False
    _THREAD.reader = None  # should connecting fail, the next read tries again
    if conn is not None:
        conn.close()
    conn = _THREAD.reader = engine.connect()
    return conn, True


def read_kept(read: Callable[[Connection], RV]) -> RV:
    """``read(connection)`` on the calling thread's kept read connection (``read_connection``'s rules: ONE
    statement). SQLite: any thread. PostgreSQL: only a thread that does nothing but such reads (``api.deps``'s
    readers, at most ``READERS``): each holds one of the read pool's connections for as long as it lives, so
    no read pays a pool checkout and its pre-ping round trip. A kept connection can have gone stale (the
    server restarted, or closed it idle): a read that finds it disconnected runs once more on a new
    connection, which is what the pre-ping did before the statement. A new connection's failure is the
    read's (``OperationalError``: the API's 503)."""
    conn, new = _kept_connection(_read_engine())
    try:
        return read(conn)
    except DBAPIError as exc:
        if new or not exc.connection_invalidated:
            raise
        log.info("a kept read connection was lost (%s); reading on a new one", exc.orig)
    return read(_kept_connection(_read_engine())[0])


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
