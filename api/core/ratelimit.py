"""Per-organization request rate limit, failed-authentication throttle per client address, and per-org
concurrency.

- ``LIMITER``: at most an org's per-minute allowance of requests in any 60 seconds (a moving window).
- ``AUTH_FAILURES``: at most ``auth_failures_per_minute`` failed authentications per client address in any
  60 seconds; past it every request from that address that carries a key is refused before the key is
  checked.
- ``IN_FLIGHT``: requests in flight per organization (per API key until its organization is known), counted
  in this API process.

The two windows are kept in ``Settings.rate_limit_storage``: in Redis by the ``limits`` library when a Redis
URL is configured (the broker's by default), so every API process shares them and the limits hold for the
whole deployment; in this process's memory otherwise (embedded mode, one API process), by ``MovingWindows``,
which counts the same way as ``limits``' memory storage without its expiry thread (that storage started a
timer thread up to 100 times a second, on the event loop, under steady traffic: the largest single cost of an
authenticated poll; ``docs/benchmarks.md``, "Poll path"). If the shared storage cannot be reached a request
is let through (logged): the limiter must not take the API down with it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from collections import deque
from functools import lru_cache
from typing import cast

from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import Storage, storage_from_string
from limits.strategies import MovingWindowRateLimiter

from tunegate.errors import RateLimited
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)

MAX_TRACKED = 10_000  # key -> org entries kept before the cache is dropped (bounded memory under a spray)
KEY_PREFIX = "tunegate-ratelimit"  # of the limiter's keys in a shared Redis
REDIS_TIMEOUT_S = 1.0  # a Redis that does not answer lets the request through after this, not never


WINDOW_S = 60.0  # every limit here is per minute, a moving window
MEMORY = "memory://"


@lru_cache(maxsize=4)
def _storage(url: str) -> Storage:
    """One storage (one connection pool) per URL for the whole process (a Redis URL)."""
    timeouts = {"socket_timeout": REDIS_TIMEOUT_S, "socket_connect_timeout": REDIS_TIMEOUT_S}
    options = timeouts if url.startswith("redis") else {}
    # a synchronous storage: the settings document redis:// and memory:// URLs, not async+... ones
    return cast(Storage, storage_from_string(url, key_prefix=KEY_PREFIX, wrap_exceptions=True, **options))


@lru_cache(maxsize=4)
def _moving_window(url: str) -> MovingWindowRateLimiter:
    return MovingWindowRateLimiter(_storage(url))


_URL: tuple[Settings, str] | None = None  # the settings object and its rate_limit_storage


def _storage_url() -> str:
    """``Settings.rate_limit_storage`` of the current settings, derived once per settings object (twice per
    request otherwise, each time deriving the broker URL and the home directory's path)."""
    global _URL
    settings = get_settings()
    cached = _URL
    if cached is None or cached[0] is not settings:
        cached = _URL = (settings, settings.rate_limit_storage)
    return cached[1]


class MovingWindows:
    """In-process moving windows: the times of each key's hits in the last minute, oldest first.

    A hit is allowed while fewer than ``per_minute`` hits of its key are less than a minute old; the wait
    of a refused one lasts until the oldest of them is a minute old. That is ``limits``' moving window
    (``MovingWindowRateLimiter`` on its memory storage), which kept the same list per key newest first,
    inserted at its front, and trimmed by a timer thread. Keys whose hits have all expired are dropped once
    ``MAX_TRACKED`` keys are held (bounded memory under a spray of keys or addresses)."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: int) -> float:
        """Count one hit; 0 when it was allowed, else the seconds until one is (nothing counted)."""
        now = time.time()
        with self._lock:
            hits = self._hits.get(key)
            if hits is None:
                if len(self._hits) >= MAX_TRACKED:
                    self._prune(now)
                hits = self._hits[key] = deque()
            wait = self._wait(hits, per_minute, now)
            if not wait:
                hits.append(now)
            return wait

    def wait(self, key: str, per_minute: int) -> float:
        """Seconds until ``key`` may have a hit (0 when it may now); counts nothing."""
        now = time.time()
        with self._lock:
            hits = self._hits.get(key)
            return 0.0 if hits is None else self._wait(hits, per_minute, now)

    @staticmethod
    def _wait(hits: deque[float], per_minute: int, now: float) -> float:
        while hits and hits[0] < now - WINDOW_S:  # a hit exactly a minute old still counts, as in limits
            hits.popleft()
        if len(hits) < per_minute:
            return 0.0
        return max(0.0, hits[0] + WINDOW_S - now)

    def _prune(self, now: float) -> None:
        for key in [k for k, hits in self._hits.items() if not hits or hits[-1] < now - WINDOW_S]:
            del self._hits[key]

    def reset(self) -> None:
        with self._lock:
            self._hits.clear()


_MEMORY_WINDOWS = MovingWindows()  # every namespace's in-process windows, keyed "namespace/key/limit"


class Windows:
    """Moving-window counters keyed by any string, each allowing ``per_minute`` hits in any 60 seconds."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace

    @property
    def shared(self) -> bool:
        """True when the counters live outside this process (a call may wait on the network)."""
        return not _storage_url().startswith(MEMORY)

    def take(self, key: str, per_minute: int) -> float:
        """Count one hit; returns 0 when it was allowed, else the seconds until one is."""
        if per_minute <= 0:
            return 0.0
        url = _storage_url()
        if url.startswith(MEMORY):
            return _MEMORY_WINDOWS.take(self._local_key(key, per_minute), per_minute)
        limiter, item = _moving_window(url), RateLimitItemPerMinute(per_minute)
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
        url = _storage_url()
        if url.startswith(MEMORY):
            return _MEMORY_WINDOWS.wait(self._local_key(key, per_minute), per_minute)
        limiter, item = _moving_window(url), RateLimitItemPerMinute(per_minute)
        try:
            return 0.0 if limiter.test(item, self.namespace, key) else self._wait(limiter, item, key)
        except StorageError as exc:
            log.warning("rate limit storage unreachable (%s): %s let through", exc, self.namespace)
            return 0.0

    def _local_key(self, key: str, per_minute: int) -> str:
        """As ``limits`` keys a window: by namespace, key AND limit (a window counted under another limit,
        e.g. before an organization's limit changed, is another window)."""
        return f"{self.namespace}/{key}/{per_minute}"

    def _wait(self, limiter: MovingWindowRateLimiter, item: RateLimitItemPerMinute, key: str) -> float:
        # the moving window frees a slot when its oldest hit is 60 s old
        return max(0.0, limiter.get_window_stats(item, self.namespace, key).reset_time - time.time())

    def reset(self) -> None:
        """Forget every window in the storage (tests: each server starts with none)."""
        url = _storage_url()
        if url.startswith(MEMORY):
            _MEMORY_WINDOWS.reset()
        else:
            _storage(url).reset()


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
