"""The moderator console's signing secret (``console_secret``).

The console signs its cookies with ``itsdangerous`` under this secret (``api/core/console_auth.py``); sessions
themselves live in the database, so the secret only vouches that a cookie was made here.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from tunegate.errors import InvalidConfig
from tunegate.settings import Settings

SECRET_FILE = "console_secret"


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
