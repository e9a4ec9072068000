"""Per-organization request rate limit, failed-authentication throttle per client address, and per-org
concurrency, all in this API process.

- ``LIMITER``: a token bucket per org; each org may burst up to its per-minute allowance and refills
  continuously.
- ``AUTH_FAILURES``: a token bucket per client address that only failed authentications drain; while it is
  empty every request from that address that carries a key is refused before the key is checked.
- ``IN_FLIGHT``: requests in flight per organization (per API key until its organization is known).

With several API processes the effective limits are multiplied by their number; a shared limiter (Redis)
would be the next step for that.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass

from tunegate.errors import RateLimited

MAX_TRACKED = 10_000  # buckets/keys kept before idle ones are dropped (bounded memory under a spray)


@dataclass
class _Bucket:
    tokens: float
    updated: float


class TokenBuckets:
    """Token buckets keyed by any string, refilled at ``per_minute`` per minute up to ``per_minute``."""

    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _refilled(self, key: str, per_minute: int, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED:
                self._prune(per_minute, now)
            bucket = self._buckets[key] = _Bucket(tokens=float(per_minute), updated=now)
        bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * per_minute / 60.0)
        bucket.updated = now
        return bucket

    def _prune(self, per_minute: int, now: float) -> None:
        full_after = 60.0  # an untouched bucket is full again within a minute: forgetting it changes nothing
        for key in [k for k, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[key]
        if len(self._buckets) >= MAX_TRACKED:  # all recent: drop the oldest half
            for key, _ in sorted(self._buckets.items(), key=lambda kv: kv[1].updated)[: MAX_TRACKED // 2]:
                del self._buckets[key]

    def take(self, key: str, per_minute: int) -> float:
        """Take one token; returns 0 when there was one, else the seconds until one is back."""
        if per_minute <= 0:
            return 0.0
        with self._lock:
            bucket = self._refilled(key, per_minute, time.monotonic())
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            return (1.0 - bucket.tokens) * 60.0 / per_minute

    def wait(self, key: str, per_minute: int) -> float:
        """Seconds until ``key`` has a token (0 when it has one now); takes nothing."""
        if per_minute <= 0:
            return 0.0
        with self._lock:
            if key not in self._buckets:
                return 0.0
            bucket = self._refilled(key, per_minute, time.monotonic())
            return 0.0 if bucket.tokens >= 1.0 else (1.0 - bucket.tokens) * 60.0 / per_minute

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


def key_digest(key: str) -> str:
    """What the limiters remember of an API key (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


class RateLimiter(TokenBuckets):
    def check(self, org_id: str, per_minute: int) -> None:
        """Take one token for ``org_id`` or raise ``RateLimited`` with the seconds until one is back."""
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


LIMITER = RateLimiter()
AUTH_FAILURES = TokenBuckets()
IN_FLIGHT = InFlight()
