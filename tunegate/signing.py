"""Signed, expiring tokens (HMAC-SHA256 over a JSON payload): the moderator console's session cookie.

A token is ``<base64url(json)>.<base64url(mac)>``; the payload carries its issue time, and ``verify`` refuses
a token older than ``max_age_s`` or signed with another secret. Nothing is encrypted: payloads hold ids and
random nonces only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from tunegate.errors import InvalidConfig
from tunegate.settings import Settings

SECRET_FILE = "console_secret"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(payload: dict[str, Any], secret: bytes, *, now: float | None = None) -> str:
    body = _b64(json.dumps({**payload, "iat": int(now if now is not None else time.time())}).encode())
    mac = hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def verify(token: str, secret: bytes, *, max_age_s: float, now: float | None = None) -> dict[str, Any] | None:
    """The payload of a valid, unexpired token; None for anything else (tampered, expired, malformed)."""
    body, _, mac = token.partition(".")
    try:
        good = hmac.compare_digest(
            _unb64(mac), hmac.new(secret, body.encode("ascii"), hashlib.sha256).digest()
        )
        payload = json.loads(_unb64(body)) if good else None
    except (ValueError, UnicodeError):  # not base64 / not JSON / not ASCII: a forged or truncated cookie
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("iat"), int):
        return None
    age = (now if now is not None else time.time()) - payload["iat"]
    return payload if 0 <= age <= max_age_s else None


def console_secret(settings: Settings) -> bytes:
    """``Settings.console_secret``; unset in embedded mode, a random one kept in ``<home>/console_secret``."""
    if settings.console_secret:
        return settings.console_secret.encode("utf-8")
    if not settings.embedded:
        raise InvalidConfig(
            "TUNEGATE_CONSOLE_SECRET must be set in distributed mode (the same on every API process)",
            param="console_secret",
        )
    return _home_secret(settings.home_dir / SECRET_FILE)


def _home_secret(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48).encode("ascii")
    try:  # O_EXCL: two API processes starting at once keep the first one's secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    return value
