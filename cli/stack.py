"""Start the service as processes: the API (uvicorn ``api.main:app``) and Celery workers.

``tunegate serve`` and ``tunegate demo`` use ``embedded_stack``: migrations first (the explicit step), then
one API process, one or more heavy Celery workers (``--pool=solo``, ``-Q gpu,cpu``: scoring, training,
evaluation, mitigation) and one light worker (``-Q short``, a threads pool: validation, the gate, job
start/resume, webhook deliveries), stopped together. Children inherit the environment, so they read the same
``Settings``, plus ``TUNEGATE_WORKER_SLOTS`` (the heavy workers started: the dispatcher's room);
``worker_env`` adds to a heavy worker's (the demo gives each of its two workers one torch thread per core
share). Nothing here imports torch.

Lifecycle: the port is checked before anything starts (``check_port``: one line naming it, not a server that
fails after "serving at"). Migrations run under a file lock in the home (``migrate``), so ``serve`` and an
admin command started at the same moment (``tunegate serve & tunegate keys create``) never upgrade at once;
the second waits, then finds the schema current. Each child runs in a process group of its own (a Ctrl-C at
the terminal reaches only the parent, which stops them in order) and, on Linux, is sent SIGTERM if the parent
dies. ``stop_all`` sends SIGTERM to every child at once, waits ``STOP_GRACE_S`` in all, then SIGKILLs what is
left with its process group; ``stop_signals`` turns SIGTERM and SIGHUP into that same orderly stop.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypedDict

import httpx

from tunegate.errors import TunegateError
from tunegate.queue import HEAVY_QUEUES, SHORT_QUEUES
from tunegate.settings import Settings

log = logging.getLogger(__name__)
STOP_GRACE_S = 15.0  # SIGTERM to SIGKILL: Celery finishes its current step (acks_late requeues the rest)
MIGRATE_WAIT_S = 60.0  # how long a command waits for another process's migration (serve's, on a fresh home)
MIGRATE_LOCK = "migrate.lock"  # in the home: held while one process runs the migrations
SHORT_CONCURRENCY = 3  # the light worker's threads: short tasks of several jobs and deliveries at once


class ProxyOptions(TypedDict):
    """uvicorn's keyword arguments for proxy headers."""

    proxy_headers: bool
    forwarded_allow_ips: str | None


def proxy_options(settings: Settings) -> ProxyOptions:
    """uvicorn's proxy-header options: X-Forwarded-For/-Proto are believed only from the proxies of
    ``Settings.forwarded_allow_ips``; with none (the default) they are ignored, as uvicorn would otherwise
    trust them from 127.0.0.1 (and any local process could pick its own client address)."""
    trusted = settings.forwarded_allow_ips.strip()
    return {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def api_command(host: str, port: int, log_level: str = "warning") -> list[str]:
    from tunegate.settings import get_settings

    proxy = proxy_options(get_settings())
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
        *(
            ["--proxy-headers", "--forwarded-allow-ips", str(proxy["forwarded_allow_ips"])]
            if proxy["proxy_headers"]
            else ["--no-proxy-headers"]
        ),
    ]


def worker_command(
    queues: str, *, name: str = "tunegate", pool: str = "solo", concurrency: int = 1, log_level: str = "INFO"
) -> list[str]:
    """A real Celery worker on ``queues`` (``gpu,cpu``: the heavy one, ``short``: the light one); ``solo``
    runs tasks in the worker process, ``threads`` runs ``concurrency`` of them at once in its threads."""
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


def check_port(host: str, port: int) -> None:
    """Fail with one line when ``host:port`` cannot be bound (another server holds it), before anything
    starts. Bound as uvicorn binds it (SO_REUSEADDR: a port a stopped server left in TIME_WAIT is free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            choose = "choose another port with --port or TUNEGATE_API_PORT"
            if exc.errno == errno.EADDRINUSE:
                raise TunegateError(
                    f"port {port} on {host} is already in use (another tunegate serve?): stop what holds it, "
                    f"or {choose}",
                    code="port_in_use",
                ) from exc
            raise TunegateError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}; check TUNEGATE_API_HOST (--host), "
                f"or {choose}",
                code="port_unavailable",
            ) from exc


def migrate(
    settings: Settings,
    *,
    wait_s: float = MIGRATE_WAIT_S,
    on_wait: Callable[[str], None] | None = None,
) -> None:
    """Upgrade the database to the newest revision (idempotent: a current schema is left as it is) under
    ``migration_lock``."""
    import migrations

    with migration_lock(settings, wait_s=wait_s, on_wait=on_wait):
        migrations.upgrade()


@contextmanager
def migration_lock(
    settings: Settings,
    *,
    wait_s: float = MIGRATE_WAIT_S,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold ``<home>/migrate.lock`` so that two tunegate processes never migrate at once. When another
    holds it, ``on_wait`` gets one line and this waits up to ``wait_s`` seconds (then a one-line error)."""
    home = settings.home_dir
    home.mkdir(parents=True, exist_ok=True)
    with (home / MIGRATE_LOCK).open("a") as lock:
        if not _try_lock(lock):
            if on_wait is not None:
                on_wait(
                    f"waiting (up to {wait_s:.0f}s) for another tunegate process (tunegate serve?) to finish "
                    "migrating the database"
                )
            deadline = time.monotonic() + wait_s
            while not _try_lock(lock):
                if time.monotonic() > deadline:
                    raise TunegateError(
                        f"another tunegate process has been migrating the database in {home} for over "
                        f"{wait_s:.0f}s; let it finish (or stop it) and run the command again",
                        code="migration_busy",
                    )
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _try_lock(lock: IO[str]) -> bool:
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def stop(proc: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM (Celery: finish the current step, requeue nothing lost thanks to acks_late), then SIGKILL."""
    stop_all([proc], grace_s)


def stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every process at once, up to ``grace_s`` seconds in all for them to exit, then SIGKILL to
    the rest; each one's process group (what it started itself) is killed too once it is gone. Ctrl-C,
    SIGTERM and SIGHUP are ignored meanwhile (the stop is bounded), so a second one cannot cut it short."""
    with _signals_ignored():
        _stop_all(procs, grace_s)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():  # only the main thread handles signals
        yield
        return
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, old)


def _stop_all(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("process %s did not stop within %.0fs of SIGTERM: killing it", proc.pid, grace_s)
            proc.kill()
            proc.wait(timeout=10)
        _kill_group(proc)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL what is left of the process group ``proc`` led (only ``_spawn``'s children lead one)."""
    if not getattr(proc, "tunegate_group", False):
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is gone already: nothing left to stop
        return


@contextmanager
def stop_signals() -> Iterator[None]:
    """Within the block SIGTERM and SIGHUP stop the program as Ctrl-C does (``KeyboardInterrupt``), so the
    stack's exit stops its children; once one arrived, later ones are ignored until the block ends, so
    that a second signal cannot cut the bounded stop short and leave children running."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.getsignal(sig) for sig in signals}

    def handler(signum: int, frame: object) -> None:
        del frame
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        log.info("received %s: stopping", signal.Signals(signum).name)
        raise KeyboardInterrupt

    for sig in signals:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            if old is not None:  # None: a handler set outside Python, which cannot be put back
                signal.signal(sig, old)


def wait_healthy(base_url: str, proc: subprocess.Popen[bytes] | None = None, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise TunegateError(f"the API process exited with status {proc.returncode} while starting")
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TunegateError(f"the API at {base_url} did not become healthy within {timeout_s:.0f}s")


@dataclass
class Stack:
    base_url: str  # http://host:port (the SDK's base_url is base_url + "/v1")
    api: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]  # the heavy workers (-Q gpu,cpu)
    short_worker: subprocess.Popen[bytes] | None = None  # the light one (-Q short)

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        """Every process of the stack: the API and all workers."""
        return [self.api, *self.workers, *([self.short_worker] if self.short_worker else [])]


def _spawn(
    cmd: list[str], out: IO[bytes] | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child in a process group of its own (the terminal's Ctrl-C reaches only us; ``stop_all``
    stops it), which on Linux gets SIGTERM if this process dies without stopping it."""
    full_env = {**os.environ, **env} if env else None
    err = subprocess.STDOUT if out is not None else None
    proc = subprocess.Popen(
        cmd,
        stdout=out,
        stderr=err,
        env=full_env,
        process_group=0,
        preexec_fn=_die_with_parent(),
    )
    proc.tunegate_group = True  # type: ignore[attr-defined]
    return proc


def _die_with_parent() -> Callable[[], None] | None:
    """What the child runs before exec on Linux: prctl(PR_SET_PDEATHSIG, SIGTERM), so it is stopped when
    this process dies without stopping it (SIGKILL). Looked up here, in the parent: between fork and exec the
    child only calls it (no import, no lock)."""
    if sys.platform != "linux":
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_pdeathsig, sigterm = 1, int(signal.SIGTERM)
    return lambda: prctl(pr_set_pdeathsig, sigterm, 0, 0, 0)


@contextmanager
def embedded_stack(
    settings: Settings,
    *,
    host: str,
    port: int,
    log_dir: Path | None = None,
    queues: str = HEAVY_QUEUES,
    workers: int = 1,
    worker_env: dict[str, str] | None = None,
    worker_slots: int | None = None,
) -> Iterator[Stack]:
    """Check the port, migrate, start the API, ``workers`` heavy workers on ``queues`` and the light worker on
    the short queue, wait until the API answers; stop them all on exit (``stop_all``). ``worker_slots``: the
    dispatcher's room (``Settings.worker_slots``; default: ``workers``)."""
    check_port(host, port)
    migrate(settings, on_wait=log.warning)
    with ExitStack() as stack:

        def log_file(name: str) -> IO[bytes] | None:
            if log_dir is None:
                return None
            log_dir.mkdir(parents=True, exist_ok=True)
            return stack.enter_context((log_dir / f"{name}.log").open("ab"))

        started: list[subprocess.Popen[bytes]] = []
        stack.callback(lambda: stop_all(started))  # whatever started, even if a later start fails
        slots = {"TUNEGATE_WORKER_SLOTS": str(worker_slots or workers)}  # the heavy workers started here
        api = _spawn(api_command(host, port), log_file("api"), slots)
        started.append(api)
        procs = []
        for i in range(workers):
            name = "embedded" if i == 0 else f"embedded{i}"
            cmd = worker_command(queues, name=name, log_level=settings.log_level)
            procs.append(
                _spawn(cmd, log_file("worker" if i == 0 else f"worker{i}"), {**slots, **(worker_env or {})})
            )
            started.append(procs[-1])
        short_cmd = worker_command(
            SHORT_QUEUES,
            name="embedded-short",
            pool="threads",
            concurrency=SHORT_CONCURRENCY,
            log_level=settings.log_level,
        )
        short = _spawn(short_cmd, log_file("worker-short"), slots)
        started.append(short)
        base_url = f"http://{host}:{port}"
        wait_healthy(base_url, api)
        yield Stack(base_url=base_url, api=api, workers=procs, short_worker=short)
