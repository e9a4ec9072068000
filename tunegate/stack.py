"""Start the service as processes: the API (uvicorn ``api.main:app``) and Celery workers.

``tunegate serve`` and ``tunegate demo`` use ``embedded_stack``: migrations first (the explicit step), then
one API process and one real Celery worker process (``--pool=solo``, both queues), stopped together. Children
inherit the environment, so they read the same ``Settings``. Nothing here imports torch.
"""

from __future__ import annotations

import logging
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
    worker: subprocess.Popen[bytes]


def _spawn(cmd: list[str], out: IO[bytes] | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out is not None else None)


@contextmanager
def embedded_stack(
    settings: Settings, *, host: str, port: int, log_dir: Path | None = None, queues: str = "gpu,cpu"
) -> Iterator[Stack]:
    """Migrate, start the API and one worker, wait until the API answers; stop both on exit."""
    import migrations

    migrations.upgrade()
    with ExitStack() as stack:
        logs: list[IO[bytes] | None] = [None, None]
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            logs = [stack.enter_context((log_dir / f"{n}.log").open("ab")) for n in ("api", "worker")]
        api = _spawn(api_command(host, port), logs[0])
        stack.callback(stop, api)
        worker = _spawn(worker_command(queues, name="embedded", log_level=settings.log_level), logs[1])
        stack.callback(stop, worker)
        base_url = f"http://{host}:{port}"
        wait_healthy(base_url, api)
        yield Stack(base_url=base_url, api=api, worker=worker)
