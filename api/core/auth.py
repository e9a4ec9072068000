"""API-key authentication: the ``Authorization: Bearer <key>`` header (``bearer_key``) and the
authentication cache, a key's organization remembered for ``Settings.auth_cache_ttl_s`` seconds. (The
dependencies that use them, ``current_org`` and ``current_admin``, are ``api/deps.py``'s; the console's
sessions are ``api/core/console_auth.py``'s.)

Every /v1 request authenticates; without the cache that is a database query before the route's own (the
poll path's cost doubled). Entries are keyed by the key's sha256 (the key itself is never kept) and expire
TTL seconds after the database read that filled them began, so a key revoked with ``tunegate keys revoke``
(another process) is refused by every API process at most TTL seconds after the revocation committed: the
documented bound. Refusals are never cached (a revoked or unknown key costs a query each time; the abuse
guard throttles the addresses that send them). TTL 0 turns the cache off.

Revocation happens in the CLI's process (there is no revocation route), so an API process cannot drop its
entry at that moment; telling every API process (e.g. Redis pub/sub from ``keys revoke``) would make the
bound zero, and the TTL keeps it small without that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from sqlalchemy import Connection

from api.core.ratelimit import MAX_TRACKED
from models.keys import authenticate, hash_key
from models.tables import Organization
from tunegate.errors import AuthenticationFailed


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


@dataclass(frozen=True)
class _Entry:
    org: Organization  # detached (models.keys.authenticate), shared by the requests of its key: read only
    expires: float  # time.monotonic()


class AuthCache:
    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key: str, ttl: float) -> Organization | None:
        """The organization of ``key`` if it authenticated less than ``ttl`` seconds ago."""
        entry = self._entries.get(hash_key(key)) if ttl > 0 else None
        if entry is None or entry.expires <= time.monotonic():
            return None
        return entry.org

    def authenticate(self, conn: Connection, key: str, ttl: float) -> Organization:
        """``models.keys.authenticate`` on ``conn``, remembering a success for ``ttl`` seconds."""
        started = time.monotonic()  # an entry never outlives a revocation committed during the read by > ttl
        org = authenticate(conn, key)
        if ttl > 0:
            entry = _Entry(org, started + ttl)
            with self._lock:
                if len(self._entries) >= MAX_TRACKED:
                    self._prune(time.monotonic())
                self._entries[hash_key(key)] = entry
        return org

    def _prune(self, now: float) -> None:
        for digest in [d for d, e in self._entries.items() if e.expires <= now]:
            del self._entries[digest]
        if len(self._entries) >= MAX_TRACKED:  # all fresh: start over (they are re-read on next use)
            self._entries.clear()

    def reset(self) -> None:
        with self._lock:
            self._entries.clear()


AUTH_CACHE = AuthCache()
