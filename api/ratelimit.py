"""Per-organization request rate limit: a token bucket per org, in this API process.

Each org may burst up to its per-minute allowance and refills continuously. With several API processes the
effective limit is multiplied by their number; a shared limiter (Redis) would be the next step for that.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass

from tunegate.errors import RateLimited


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def check(self, org_id: str, per_minute: int) -> None:
        """Take one token for ``org_id`` or raise ``RateLimited`` with the seconds until one is back."""
        if per_minute <= 0:
            return
        rate = per_minute / 60.0  # tokens per second
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.setdefault(org_id, _Bucket(tokens=float(per_minute), updated=now))
            bucket.tokens = min(float(per_minute), bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return
            wait = (1.0 - bucket.tokens) / rate
        raise RateLimited(
            f"Rate limit reached for your organization: {per_minute} requests per minute.",
            retry_after=max(1, math.ceil(wait)),
        )

    def reset(self) -> None:
        with self._lock:
            self._buckets.clear()


LIMITER = RateLimiter()
