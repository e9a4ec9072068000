"""The moderator console's authentication: its login form's CSRF nonce, the login (with the API's guard
against guessing), server-side sessions and their cookies, CSRF tokens, logout.

- Cookies are signed with ``itsdangerous`` (``URLSafeTimedSerializer``, one salt per cookie kind) under
  ``tunegate.signing.console_secret``; a token older than its max age or signed otherwise is refused.
- A session is a row (``models.tables.ConsoleSession``): the cookie carries a random token, the row (keyed by
  the token's sha256) names the admin key, holds the session's CSRF token and its expiry. Every request
  re-reads the row and the key, so logout (the row deleted) and revoking the key both end the session at once,
  for every copy of the cookie.
- Every POST echoes the session's CSRF token (the login form its own nonce, from a short-lived cookie).
- A login is refused (429) while the client address's failed authentications are over
  ``Settings.auth_failures_per_minute`` (the window of ``api.core.ratelimit.AUTH_FAILURES``, shared with the
  API's abuse guard), and a wrong key counts as one.

The console's pages ask ``current_staff`` (a page without a session redirects to the login form,
``to_login``); its actions ask ``acting_staff`` (no session or no matching CSRF token: 403).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from fastapi import Request
from fastapi.responses import RedirectResponse, Response
from itsdangerous import BadData, URLSafeTimedSerializer
from sqlalchemy import delete
from sqlalchemy.orm import Session

from api.core.ratelimit import AUTH_FAILURES, retry_after
from api.core.responses import console_redirect
from models.base import utcnow
from models.keys import ROLE_ADMIN, Admin, authenticate_admin
from models.tables import ApiKey, ConsoleSession
from tunegate.errors import PermissionDenied, RateLimited, TunegateError
from tunegate.settings import Settings
from tunegate.signing import console_secret

COOKIE = "tg_console"
LOGIN_COOKIE = "tg_console_login"  # the login form's own CSRF token (a signed nonce)
LOGIN_MAX_AGE_S = 3600
PATH = "/console"
LOGIN_PATH = f"{PATH}/login"
_SESSION_SALT = "tunegate.console.session"
_LOGIN_SALT = "tunegate.console.login"


@dataclass(frozen=True)
class Staff:
    admin: Admin
    csrf: str


def _serializer(settings: Settings, salt: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(console_secret(settings), salt=salt)


def _unsign(settings: Settings, salt: str, token: str | None, max_age_s: int) -> str | None:
    """The value of a cookie signed here with ``salt`` and younger than ``max_age_s``; None otherwise."""
    if not token:
        return None
    try:
        value = _serializer(settings, salt).loads(token, max_age=max_age_s)
    except BadData:  # tampered, expired, signed with another secret or salt, malformed
        return None
    return value if isinstance(value, str) else None


def _bytes(text: str) -> bytes:
    # compared as bytes: compare_digest refuses a str with non-ASCII characters (TypeError, a 500)
    return text.encode("utf-8", "surrogatepass")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=PATH,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def to_login() -> RedirectResponse:
    """Where a console page sends a caller without a live session."""
    return console_redirect(LOGIN_PATH)


def _csrf_failed() -> PermissionDenied:
    return PermissionDenied("The form's CSRF token does not match this session.", code="csrf_failed")


# --- the login form ----------------------------------------------------------------------------------------


def new_login_nonce() -> str:
    """A fresh CSRF token for the login form (``issue_login_nonce`` sends it as a cookie too)."""
    return secrets.token_urlsafe(24)


def issue_login_nonce(request: Request, response: Response, settings: Settings, nonce: str) -> None:
    """The login form's CSRF token ``nonce``, also sent as a signed short-lived cookie."""
    token = _serializer(settings, _LOGIN_SALT).dumps(nonce)
    set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_MAX_AGE_S)


def login_nonce_matches(request: Request, settings: Settings, csrf: str) -> bool:
    """The posted form's token is the one its cookie carries (and the cookie is ours and fresh)."""
    nonce = _unsign(settings, _LOGIN_SALT, request.cookies.get(LOGIN_COOKIE), LOGIN_MAX_AGE_S)
    return nonce is not None and secrets.compare_digest(_bytes(nonce), _bytes(csrf))


def log_in(request: Request, session: Session, settings: Settings, key: str, csrf: str) -> Admin:
    """The admin whose key the login form posted. Refused, in this order: a form whose token is not its
    cookie's (403, the form expired), an address over its failed authentications (429, before the key is
    looked at), a wrong key (401, counted as a failure of the address) or an organization's key (403)."""
    if not login_nonce_matches(request, settings, csrf):
        raise PermissionDenied("The login form expired; please try again.", code="csrf_failed")
    client = request.client.host if request.client else "unknown"
    wait = AUTH_FAILURES.wait(client, settings.auth_failures_per_minute)
    if wait:
        raise RateLimited(
            "Too many failed logins from your address; retry later.", retry_after=retry_after(wait)
        )
    try:
        return authenticate_admin(session, key.strip())
    except TunegateError as exc:
        if exc.status_code == 401:
            AUTH_FAILURES.take(client, settings.auth_failures_per_minute)
        raise


# --- sessions ----------------------------------------------------------------------------------------------


def start_session(
    session: Session, request: Request, response: Response, settings: Settings, admin: Admin
) -> None:
    """A new session of ``admin`` (a row; the caller commits) and its cookie on ``response``; expired
    sessions of every admin are deleted on the way."""
    now = utcnow()
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    max_age = settings.console_session_max_age_s
    session.add(
        ConsoleSession(
            id=_digest(token),
            key_id=admin.key_id,
            csrf=secrets.token_urlsafe(24),
            created_at=now,
            expires_at=now + timedelta(seconds=max_age),
        )
    )
    set_cookie(response, request, COOKIE, _serializer(settings, _SESSION_SALT).dumps(token), max_age)
    response.delete_cookie(LOGIN_COOKIE, path=PATH)


def _session_row(request: Request, session: Session, settings: Settings) -> ConsoleSession | None:
    token = _unsign(settings, _SESSION_SALT, request.cookies.get(COOKIE), settings.console_session_max_age_s)
    if token is None:
        return None
    row = session.get(ConsoleSession, _digest(token))
    return row if row is not None and row.expires_at > utcnow() else None


def current_staff(request: Request, session: Session, settings: Settings) -> Staff | None:
    """The logged-in admin: a valid cookie of a live session whose key is still an unrevoked admin key."""
    row = _session_row(request, session, settings)
    if row is None:
        return None
    key = session.get(ApiKey, row.key_id)
    if key is None or key.revoked_at is not None or key.role != ROLE_ADMIN:
        return None
    return Staff(Admin(key_id=key.id, name=key.name or key.id), row.csrf)


def csrf_matches(staff: Staff, csrf: str) -> bool:
    return secrets.compare_digest(_bytes(staff.csrf), _bytes(csrf))


def acting_staff(request: Request, session: Session, settings: Settings, csrf: str) -> Staff:
    """The staff member behind a POST: a live session AND its CSRF token, else ``PermissionDenied``."""
    staff = current_staff(request, session, settings)
    if staff is None:
        raise PermissionDenied(
            "Your console session has expired: log in again.", code="console_login_required"
        )
    if not csrf_matches(staff, csrf):
        raise _csrf_failed()
    return staff


def end_session(
    request: Request, session: Session, settings: Settings, response: Response, csrf: str
) -> None:
    """Logout: delete the session's row (the caller commits): its cookie, and every copy of it, opens nothing
    more. The cookie is cleared too. A live session's CSRF token is required (else ``PermissionDenied``); an
    expired session is simply cleared."""
    staff = current_staff(request, session, settings)
    if staff is not None and not csrf_matches(staff, csrf):
        raise _csrf_failed()
    row = _session_row(request, session, settings)
    if row is not None:
        session.delete(row)
    response.delete_cookie(COOKIE, path=PATH)
