"""Request dependencies as Annotated aliases: a database session and the caller's organization."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy.orm import Session

from api.ratelimit import LIMITER
from models.db import new_session
from models.keys import authenticate
from models.tables import Organization
from tunegate.errors import AuthenticationFailed
from tunegate.settings import Settings, get_settings


def _session(request: Request) -> Iterator[Session]:
    session = new_session(readonly=request.method in ("GET", "HEAD"))
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def _current_org(
    session: SessionDep, settings: SettingsDep, authorization: Annotated[str | None, Header()] = None
) -> Organization:
    if not authorization:
        raise AuthenticationFailed(
            "You didn't provide an API key: send 'Authorization: Bearer <key>'.", code="missing_api_key"
        )
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthenticationFailed("Malformed Authorization header: expected 'Bearer <key>'.")
    org = authenticate(session, key.strip())
    LIMITER.check(org.id, org.rate_limit_per_minute or settings.rate_limit_per_minute)
    return org


CurrentOrg = Annotated[Organization, Depends(_current_org)]
