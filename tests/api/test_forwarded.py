"""Issue 29 §4: the failed-authentication throttle keys on the peer's address, not on X-Forwarded-For.

uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise, so a client on the API's host could
rotate the header and never be throttled (the probe sent 200 bad keys: 200 x 401, no 429). The API is started
for real, the way `tunegate serve` (cli/stack.py) and `tunegate api` (the Dockerfile and compose) start it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.api.server import free_port

FAILURES_PER_MINUTE = 5


@contextmanager
def api_process(launcher: str, home: Path, env: dict[str, str]) -> Iterator[str]:
    from cli.stack import api_command, stop, wait_healthy
    from tunegate.settings import reset_settings

    port = free_port()
    full_env = {**os.environ, "TUNEGATE_AUTH_FAILURES_PER_MINUTE": str(FAILURES_PER_MINUTE), **env}
    if launcher == "tunegate serve":
        with pytest.MonkeyPatch.context() as mp:  # api_command reads the settings as `serve` would
            for k, v in env.items():
                mp.setenv(k, v)
            reset_settings()
            cmd = api_command("127.0.0.1", port)
        reset_settings()
    else:
        cmd = [sys.executable, "-c", "from cli import main; main()", "api", "--port", str(port)]
    log = (home / f"api-{port}.log").open("ab")
    proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(base, proc)
        yield base
    finally:
        stop(proc)
        log.close()


def _statuses(base: str, forwarded: list[str]) -> list[int]:
    with httpx.Client(base_url=base, timeout=30) as http:
        return [
            http.get(
                "/v1/files", headers={"authorization": f"Bearer tg-guess{i}", "x-forwarded-for": address}
            ).status_code
            for i, address in enumerate(forwarded)
        ]


ROTATING = [f"203.0.113.{i}" for i in range(1, 4 * FAILURES_PER_MINUTE)]


@pytest.mark.parametrize("launcher", ["tunegate serve", "tunegate api"])
def test_rotating_x_forwarded_for_does_not_escape_the_throttle(launcher: str, migrated_home: Path) -> None:
    with api_process(launcher, migrated_home, {}) as base:
        statuses = _statuses(base, ROTATING)
    assert statuses[:FAILURES_PER_MINUTE] == [401] * FAILURES_PER_MINUTE
    assert set(statuses[FAILURES_PER_MINUTE:]) == {429}, statuses


def test_a_listed_proxy_is_believed(migrated_home: Path) -> None:
    """Behind a proxy named in TUNEGATE_FORWARDED_ALLOW_IPS each forwarded client has its own throttle."""
    with api_process("tunegate api", migrated_home, {"TUNEGATE_FORWARDED_ALLOW_IPS": "127.0.0.1"}) as base:
        rotating = _statuses(base, ROTATING)
        one_client = _statuses(base, ["198.51.100.7"] * (FAILURES_PER_MINUTE + 1))
    assert set(rotating) == {401}, rotating
    assert one_client == [401] * FAILURES_PER_MINUTE + [429]
