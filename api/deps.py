"""Request dependencies as Annotated aliases: a database session and the caller's organization."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.ratelimit import IN_FLIGHT, LIMITER, key_digest
from models.db import new_session
from models.keys import Admin, authenticate, authenticate_admin
from models.tables import Organization
from tunegate.errors import AuthenticationFailed
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


def bearer_key(authorization: str | None) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; ``AuthenticationFailed`` naming what is wrong."""
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
    return key.strip()


def current_org(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Organization:
    key = bearer_key(authorization)
    org = authenticate(session, key)
    bind(org_id=org.id)  # every later log line of this request names the organization
    # the abuse guard counts its requests per org
    IN_FLIGHT.learn(key_digest((authorization or "").strip()), org.id)
    # End the read transaction: its pooled connection must not be held while the route waits for a
    # threadpool slot (under load every slot can be taken by requests waiting for a connection: a deadlock
    # until the pool timeout). Nothing was written; expire_on_commit=False keeps ``org`` loaded.
    session.commit()
    LIMITER.check(org.id, org.rate_limit_per_minute or settings.rate_limit_per_minute)
    return org


CurrentOrg = Annotated[Organization, Depends(current_org)]


def current_admin(session: SessionDep, authorization: Annotated[str | None, Header()] = None) -> Admin:
    """Provider staff sending an admin key as a bearer token (e.g. ``GET /metrics``); an org key gets 403."""
    admin = authenticate_admin(session, bearer_key(authorization))
    bind(admin=admin.name)  # the request's log lines name the staff member
    session.commit()
    return admin


AdminKey = Annotated[Admin, Depends(current_admin)]
