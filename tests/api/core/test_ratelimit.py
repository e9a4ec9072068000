"""Issue 14: with a Redis storage configured, the per-organization rate limit and the failed-authentication
throttle hold across API processes (two real uvicorn processes sharing one Redis). Without one, the
in-process windows (``MovingWindows``) decide and wait exactly as ``limits``' memory storage did."""

from __future__ import annotations

import random
import secrets
from types import SimpleNamespace

import httpx
import pytest
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from tests.api.conftest import new_key
from tests.api.server import Server, uvicorn_process

REDIS_URL = "redis://127.0.0.1:6379/12"


def test_in_process_windows_count_as_limits_memory_storage_did(monkeypatch: pytest.MonkeyPatch) -> None:
    import limits.storage.memory

    from api.core import ratelimit

    clock = SimpleNamespace(now=1_000.0)
    fake_time = SimpleNamespace(time=lambda: clock.now)
    monkeypatch.setattr(ratelimit, "time", fake_time)
    monkeypatch.setattr(limits.storage.memory, "time", fake_time)
    monkeypatch.setattr(ratelimit, "_MEMORY_WINDOWS", ratelimit.MovingWindows())
    monkeypatch.setattr(ratelimit, "_storage_url", lambda: ratelimit.MEMORY)
    ours, theirs = ratelimit.Windows("n"), MovingWindowRateLimiter(MemoryStorage())
    rng = random.Random(7)
    for _ in range(5_000):
        clock.now += rng.choice([0.001, 0.5, 3.0, 10.0, 59.999, 60.0, 60.001]) * rng.random()
        key, per_minute = rng.choice("abc"), rng.choice([1, 2, 5])  # a key's limit may change, too
        item = RateLimitItemPerMinute(per_minute)
        if rng.random() < 0.3:
            got, allowed = ours.wait(key, per_minute), theirs.test(item, "n", key)
        else:
            got, allowed = ours.take(key, per_minute), theirs.hit(item, "n", key)
        expected = (
            0.0 if allowed else max(0.0, theirs.get_window_stats(item, "n", key).reset_time - clock.now)
        )
        assert got == pytest.approx(expected, abs=1e-9)


def _from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30)


@pytest.mark.redis
def test_limits_hold_across_two_api_processes_sharing_redis(server: Server) -> None:
    env = {"TUNEGATE_RATE_LIMIT_STORAGE_URL": REDIS_URL, "TUNEGATE_AUTH_FAILURES_PER_MINUTE": "3"}
    auth = {"authorization": f"Bearer {new_key(rate_limit_per_minute=4)}"}
    # windows live for a minute in Redis: a fresh client address per run keeps runs apart
    address = f"127.{random.randint(1, 254)}.{random.randint(1, 254)}.{random.randint(2, 254)}"
    with uvicorn_process(server.home, env) as (_, a), uvicorn_process(server.home, env) as (_, b):
        with _from(address) as client:
            served = [client.get(f"{base}/v1/files", headers=auth).status_code for base in (a, b, a, b)]
            assert served == [200, 200, 200, 200]
            for base in (a, b):  # the organization's 5th request in the minute, on either process
                refused = client.get(f"{base}/v1/files", headers=auth)
                assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
                assert refused.json()["error"]["type"] == "rate_limit_error"
            bad = {"authorization": f"Bearer tg-{secrets.token_hex(16)}"}
            failures = [client.get(f"{base}/v1/files", headers=bad).status_code for base in (a, b, a)]
            assert failures == [401, 401, 401]
            throttled = client.get(f"{b}/v1/files", headers=bad)  # the address's 4th failure, elsewhere
            assert throttled.status_code == 429
            assert throttled.json()["error"]["code"] == "auth_failures_rate_limited"
