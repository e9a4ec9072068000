"""Per-organization request rate limit, failed-authentication throttle per client address, and per-org
concurrency.

- ``LIMITER``: at most an org's per-minute allowance of requests in any 60 seconds (a moving window).
- ``AUTH_FAILURES``: at most ``auth_failures_per_minute`` failed authentications per client address in any
  60 seconds; past it every request from that address that carries a key is refused before the key is
  checked.
- ``IN_FLIGHT``: requests in flight per organization (per API key until its organization is known), counted
  in this API process.

The two windows are kept by the ``limits`` library in ``Settings.rate_limit_storage``: Redis when a Redis URL
is configured (the broker's by default), so every API process shares them and the limits hold for the whole
deployment; this process's memory otherwise (embedded mode, one API process). If the shared storage cannot
be reached a request is let through (logged): the limiter must not take the API down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from functools import lru_cache
from typing import cast

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from tunegate.errors import RateLimited
from tunegate.settings import get_settings

log = logging.getLogger(__name__)

MAX_TRACKED = 10_000  # key -> org entries kept before the cache is dropped (bounded memory under a spray)
KEY_PREFIX = "tunegate-ratelimit"  # of the limiter's keys in a shared Redis
REDIS_TIMEOUT_S = 1.0  # a Redis that does not answer lets the request through after this, not never


@lru_cache(maxsize=4)
def _storage(url: str) -> Storage:
    """One storage (one connection pool) per URL for the whole process."""
    if url.startswith("memory://"):
        return MemoryStorage(wrap_exceptions=True)
    timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    options = timeouts if url.startswith("redis") else {}
    # a synchronous storage: the settings document redis:// and memory:// URLs, not async+... ones
    return cast(Storage, storage_from_string(url, key_prefix=KEY_PREFIX, wrap_exceptions=True, **options))


@lru_cache(maxsize=4)
def _moving_window(url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(_storage(url))


class Windows:
    """Moving-window counters keyed by any string, each allowing ``per_minute`` hits in any 60 seconds."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @property
    def _limiter(self) -> MovingWindowRateLimiter:
        return _moving_window(get_settings().rate_limit_storage)

    @property
    def shared(self) -> bool:
        """True when the counters live outside this process (a call may wait on the network)."""
        return not get_settings().rate_limit_storage.startswith("memory://")

    def take(self, key: str, per_minute: int) -> float:
        """Count one hit; returns 0 when it was allowed, else the seconds until one is."""
        if per_minute <= 0:
            return 0.0
        limiter, item = self._limiter, RateLimitItemPerMinute(per_minute)
        try:
            if limiter.hit(item, self.namespace, key):
                return 0.0
            return self._wait(limiter, item, key)
        except StorageError as exc:
            log.warning("rate limit storage unreachable (%s): %s let through", exc, self.namespace)
            return 0.0

    def wait(self, key: str, per_minute: int) -> float:
        """Seconds until ``key`` may have a hit (0 when it may now); counts nothing."""
        if per_minute <= 0:
            return 0.0
        limiter, item = self._limiter, RateLimitItemPerMinute(per_minute)
        try:
            return 0.0 if limiter.test(item, self.namespace, key) else self._wait(limiter, item, key)
        except StorageError as exc:
            log.warning("rate limit storage unreachable (%s): %s let through", exc, self.namespace)
            return 0.0

    def _wait(self, limiter: MovingWindowRateLimiter, item: RateLimitItemPerMinute, key: str) -> float:
        # the moving window frees a slot when its oldest hit is 60 s old
        return max(0.0, limiter.get_window_stats(item, self.namespace, key).reset_time - time.time())

    def reset(self) -> None:
        """Forget every window in the storage (tests: each server starts with none)."""
        _storage(get_settings().rate_limit_storage).reset()


def key_digest(key: str) -> str:
    """What the limiters remember of an API key (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class RateLimiter(Windows):
    def check(self, org_id: str, per_minute: int) -> None:
        """Count one request of ``org_id`` or raise ``RateLimited`` with the seconds until one is allowed."""
        wait = self.take(org_id, per_minute)
        if wait:
            raise RateLimited(
                f"Rate limit reached for your organization: {per_minute} requests per minute.",
                retry_after=retry_after(wait),
            )


class InFlight:
    """Requests in flight per organization; ``key_orgs`` maps a key's digest to its org once known."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._key_orgs: dict[str, str] = {}
        self._lock = threading.Lock()

    def owner(self, key_digest: str) -> str:
        """What a request with this key counts against: its organization once known, else the key."""
        with self._lock:
            return self._key_orgs.get(key_digest) or f"key:{key_digest}"

    def learn(self, key_digest: str, org_id: str) -> None:
        with self._lock:
            if len(self._key_orgs) >= MAX_TRACKED:
                self._key_orgs.clear()  # a cache: requests count per key until they authenticate again
            self._key_orgs[key_digest] = org_id

    def acquire(self, owner: str, limit: int) -> bool:
        """Count one more request of ``owner`` unless it has ``limit`` in flight already."""
        with self._lock:
            n = self._counts.get(owner, 0)
            if n >= limit:
                return False
            self._counts[owner] = n + 1
            return True

    def release(self, owner: str) -> None:
        with self._lock:
            n = self._counts.get(owner, 0) - 1
            if n > 0:
                self._counts[owner] = n
            else:
                self._counts.pop(owner, None)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._key_orgs.clear()


LIMITER = RateLimiter("requests")
AUTH_FAILURES = Windows("auth-failures")
IN_FLIGHT = InFlight()
