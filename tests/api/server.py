"""A real uvicorn server in a background thread, against a chosen database (tests only)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

PG_ADMIN_URL = "postgresql+psycopg://root@127.0.0.1:5432/test"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pg_schema_url() -> Iterator[str]:
    """A fresh PostgreSQL schema for this test session; the URL puts it first on the search path."""
    schema = "tg_" + secrets.token_hex(6)
    admin = create_engine(PG_ADMIN_URL, pool_pre_ping=True)  # survives a PostgreSQL restart in a test
    try:
        with admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # PostgreSQL not running: the postgres-marked tests cannot run here
        admin.dispose()
        pytest.fail(f"PostgreSQL at 127.0.0.1:5432 is required for the postgres tests: {exc}")
    try:
        yield f"{PG_ADMIN_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@dataclass
class Server:
    base_url: str
    home: Path
    backend: str


@contextmanager
def run_server() -> Iterator[str]:
    from api.core.auth import AUTH_CACHE
    from api.core.ratelimit import AUTH_FAILURES, IN_FLIGHT, LIMITER
    from api.main import create_app

    for state in (LIMITER, AUTH_FAILURES, IN_FLIGHT, AUTH_CACHE):
        state.reset()
    port = free_port()
    config = uvicorn.Config(
        create_app(), host="127.0.0.1", port=port, log_level="warning", lifespan="on", server_header=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@contextmanager
def uvicorn_process(
    home: Path, env: dict[str, str] | None = None, *, cli: bool = False
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A real ``uvicorn api.main:app`` process (``cli``: started as ``tunegate api``) with this test's
    environment plus ``env``; its output goes to ``home/api-<port>.log``."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        **(env or {}),
    }
    log = (home / f"api-{port}.log").open("ab")
    cmd = (
        [sys.executable, "-c", "from cli import main; main()", "api"]
        if cli
        else [sys.executable, "-m", "uvicorn", "api.main:app"]
    ) + ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base) or proc.poll() is not None, "the API to start")
        assert proc.poll() is None, (home / f"api-{port}.log").read_text()
        yield proc, base
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=15)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/healthz", timeout=2).status_code < 500
    except httpx.TransportError:
        return False


def wait_for(cond: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
