"""Request dependencies as Annotated aliases: a database session and the caller's organization; ``read_db``
for the poll path's single-statement reads."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Annotated, TypeVar

from fastapi import Depends, Header, Request
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.core.auth import AUTH_CACHE, bearer_key
from api.core.ratelimit import IN_FLIGHT, LIMITER, key_digest
from models.db import READERS, new_session, read_connection, read_kept, reads_block_briefly
from models.keys import Admin, authenticate_admin
from models.tables import Organization
from tunegate.logs import bind
from tunegate.settings import Settings, get_settings


async def _session(request: Request) -> AsyncIterator[Session]:
    # async on purpose: a sync generator's teardown (session.close(), which returns the pooled connection)
    # would need a threadpool slot while still holding the connection, and under load every slot can be
    # held by requests waiting for a connection (a deadlock until the pool timeout). Closing is quick.
    session = new_session(readonly=request.method in ("GET", "HEAD"))
    try:
        yield session
    finally:
        session.close()


# At most MAX_SESSIONS requests hold a session at once (the others wait on the event loop, not in a worker
# thread): with fewer sessions than pooled connections (SQLite 15, PostgreSQL 30), a session never waits
# for a connection, so worker threads cannot all block on the pool while the connections' holders wait for
# a thread (seen as 30 s pool timeouts with 80+ concurrent clients). scope="function" closes the session
# as soon as the route returns, before the response is serialized.
MAX_SESSIONS = 12
SessionDep = Annotated[Session, Depends(_session, scope="function", max_concurrency=MAX_SESSIONS)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


T = TypeVar("T")
_READERS: ThreadPoolExecutor | None = None
_READERS_LOCK = threading.Lock()


def _readers() -> ThreadPoolExecutor:
    """PostgreSQL's reader threads: ``READERS`` threads that do nothing but the poll path's reads, each on
    its own kept connection (``models.db.read_kept``); the read engine's pool has room for them."""
    global _READERS
    with _READERS_LOCK:
        if _READERS is None:
            _READERS = ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="tunegate-reader")
        return _READERS


async def read_db(read: Callable[[Connection], T]) -> T:
    """``read(connection)`` on a kept read connection (``models.db.read_kept``; autocommit: ONE statement
    per read), no ORM session. SQLite: right here on the event loop (``reads_block_briefly``); PostgreSQL:
    in one hop to a reader thread (at most ``READERS`` reads at once; the others wait their turn in order),
    in this request's context (its log fields, its deadlines)."""
    if reads_block_briefly():
        return read_kept(read)
    context = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(_readers(), context.run, read_kept, read)


def _admitted(org: Organization, authorization: str | None, settings: Settings) -> Organization:
    bind(org_id=org.id)  # every later log line of this request names the organization
    IN_FLIGHT.learn(key_digest((authorization or "").strip()), org.id)  # the abuse guard counts per org
    LIMITER.check(org.id, org.rate_limit_per_minute or settings.rate_limit_per_minute)
    return org


async def current_org(request: Request) -> Organization:
    """The caller's organization: from the auth cache (``api/core/auth.py``, no query) or one query, then the
    per-organization rate limit. Holds no session: the route's own read is the request's only query.
    Every /v1 request passes here, so it asks FastAPI for nothing but the request (each declared parameter
    or sub-dependency is resolved and validated per request)."""
    authorization = request.headers.get("authorization")
    settings = get_settings()
    key = bearer_key(authorization)
    ttl = settings.auth_cache_ttl_s
    org = AUTH_CACHE.get(key, ttl)
    if org is None:
        org = await read_db(partial(AUTH_CACHE.authenticate, key=key, ttl=ttl))
    return _admitted(org, authorization, settings)


def current_org_blocking(authorization: str | None, settings: Settings) -> Organization:
    """``current_org`` for code already in a worker thread (the upload route)."""
    key = bearer_key(authorization)
    ttl = settings.auth_cache_ttl_s
    org = AUTH_CACHE.get(key, ttl)
    if org is None:
        with read_connection() as conn:
            org = AUTH_CACHE.authenticate(conn, key, ttl)
    return _admitted(org, authorization, settings)


# The caller's organization: a detached copy of its row, shared with the other requests of the same key while
# cached (api/core/auth.py). Read it; never change or add it to a session.
CurrentOrg = Annotated[Organization, Depends(current_org)]


def current_admin(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Admin:
    """Provider staff sending an admin key as a bearer token (e.g. ``GET /metrics``); an org key gets 403."""
    admin = authenticate_admin(session, bearer_key(authorization))
    bind(admin=admin.name)  # the request's log lines name the staff member
    session.commit()
    return admin


AdminKey = Annotated[Admin, Depends(current_admin)]
