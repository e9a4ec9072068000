"""Start the service as processes: the API (uvicorn ``api.main:app``) and Celery workers.

``tunegate serve`` and ``tunegate demo`` use ``embedded_stack``: migrations first (the explicit step), then
one API process and one or more real Celery worker processes (``--pool=solo``, both queues), stopped together.
Children inherit the environment, so they read the same ``Settings``; ``worker_env`` adds to a worker's
(the demo gives each of its two workers one torch thread per core share). Nothing here imports torch.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import httpx

from tunegate.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 15.0


def api_command(host: str, port: int, log_level: str = "warning") -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "api.main:app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        log_level.lower(),
        "--no-server-header",
    ]


def worker_command(
    queues: str, *, name: str = "tunegate", pool: str = "solo", concurrency: int = 1, log_level: str = "INFO"
) -> list[str]:
    """A real Celery worker on ``queues`` (e.g. ``gpu,cpu``); ``solo`` runs tasks in the worker process."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queues,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        log_level,
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
    ]


def stop(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (Celery: finish the current step, requeue nothing lost thanks to acks_late), then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the API process exited with status {proc.returncode}")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the API at {base_url} did not become healthy within {timeout_s:.0f}s")


@dataclass
class Stack:
    base_url: str  # http://host:port (the SDK's base_url is base_url + "/v1")
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]


def _spawn(
    cmd: list[str], out: IO[bytes] | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    full_env = {**os.environ, **env} if env else None
    err = subprocess.STDOUT if out is not None else None
    return subprocess.Popen(cmd, stdout=out, stderr=err, env=full_env)


@contextmanager
def embedded_stack(
    settings: Settings,
    *,
    host: str,
    port: int,
    log_dir: Path | None = None,
    queues: str = "gpu,cpu",
    workers: int = 1,
    worker_env: dict[str, str] | None = None,
) -> Iterator[Stack]:
    """Migrate, start the API and ``workers`` workers, wait until the API answers; stop them all on exit."""
    import migrations

    migrations.upgrade()
    with ExitStack() as stack:

        def log_file(name: str) -> IO[bytes] | None:
            if log_dir is None:
                return None
            log_dir.mkdir(parents=True, exist_ok=True)
            return stack.enter_context((log_dir / f"{name}.log").open("ab"))

        api = _spawn(api_command(host, port), log_file("api"))
        stack.callback(stop, api)
        procs = []
        for i in range(workers):
            name = "embedded" if i == 0 else f"embedded{i}"
            cmd = worker_command(queues, name=name, log_level=settings.log_level)
            procs.append(_spawn(cmd, log_file("worker" if i == 0 else f"worker{i}"), worker_env))
            stack.callback(stop, procs[-1])
        base_url = f"http://{host}:{port}"
        wait_healthy(base_url, api)
        yield Stack(base_url=base_url, api=api, workers=procs)
