"""The worker's Celery app: ``celery -A worker.celery_app worker -Q gpu,cpu`` (the heavy worker: scoring,
training, evaluation, mitigation) and ``-Q short`` (the light one: validation, the gate, job start/resume,
webhook deliveries; a threads pool of a few), so short tasks never wait behind training (``tunegate.queue``).

The app itself (broker, routes, acks_late) is built in ``tunegate.queue`` so the API can send tasks by name
without importing any of this. Here the task bodies are registered, logging goes through ``tunegate.logs``
(JSON lines), the worker counts into the shared Prometheus directory (``tunegate.metrics``; pool children
write files of their own), each worker process gets fresh database connections, and every worker starts a
reaper thread (``worker/reaper.py``).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from celery.signals import setup_logging, worker_init, worker_process_init, worker_ready, worker_shutdown

from models.db import reset_engine
from models.presence import PresenceThread
from tunegate import logs, metrics
from tunegate.queue import celery_app, time_limits
from tunegate.settings import get_settings
from worker import tasks as _tasks  # noqa: F401  (registers the task bodies)
from worker.ml.preload import preload
from worker.reaper import ReaperThread
from worker.stages.all import PIPELINE

log = logging.getLogger(__name__)
app = celery_app()
_STAGE_QUEUES = {spec.task: spec.queue for spec in PIPELINE.specs}
app.conf.task_routes = {**app.conf.task_routes, **{t: {"queue": q} for t, q in _STAGE_QUEUES.items()}}
app.conf.task_annotations = {**app.conf.task_annotations, **time_limits(get_settings(), _STAGE_QUEUES)}
PIPELINE.check_overrides(get_settings())  # a worker with overrides of an unknown stage does not start
_reaper: list[ReaperThread] = []
_alive: list[AliveFile] = []
_presence: list[PresenceThread] = []


class AliveFile(threading.Thread):
    """Touches ``Settings.worker_alive_file`` every ``heartbeat_s`` while the worker runs: the container
    healthcheck reads its age (no HTTP in a worker; `celery inspect ping` goes unanswered while a solo pool
    runs a stage)."""

    def __init__(self, path: Path, interval_s: float) -> None:
        super().__init__(name="tunegate-alive-file", daemon=True)
        self.path, self.interval_s = path, interval_s
        self.stopped = threading.Event()

    def run(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            self.path.touch()
            if self.stopped.wait(self.interval_s):
                break
        self.path.unlink(missing_ok=True)  # a stopped worker is not healthy


@setup_logging.connect
def _logging(**_: Any) -> None:
    logs.configure(get_settings())  # connected: Celery leaves logging to us


@worker_init.connect
def _metrics(**_: Any) -> None:
    metrics.setup(get_settings())  # before the pool forks: every child counts into the same directory


@worker_init.connect
def _preload(**_: Any) -> None:
    preload()  # before a threads pool's threads: transformers' lazy first import is not thread-safe


@worker_process_init.connect
def _fresh_connections(**_: Any) -> None:
    reset_engine()  # a forked pool child must not share its parent's database sockets


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    thread = ReaperThread(get_settings())
    thread.start()
    _reaper.append(thread)
    log.info(
        "reaper started (every %ss, stale after %ss)",
        thread.settings.reap_interval_s,
        thread.settings.stale_after_s,
    )
    if thread.settings.worker_alive_file is not None:
        alive = AliveFile(thread.settings.worker_alive_file, thread.settings.heartbeat_s)
        alive.start()
        _alive.append(alive)


@worker_ready.connect
def _start_presence(sender: Any = None, **_: Any) -> None:
    """This worker's row in ``worker_presence`` (``models/presence.py``): which queues have a live worker."""
    queues = [q.name for q in sender.task_consumer.queues] if sender is not None else []
    name = str(getattr(sender, "hostname", "") or "worker")
    thread = PresenceThread(get_settings(), name, queues, {s.name: s.queue for s in PIPELINE.specs})
    thread.start()
    _presence.append(thread)


@worker_shutdown.connect
def _stop_presence(**_: Any) -> None:
    while _presence:
        _presence.pop().stop()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    while _reaper:
        _reaper.pop().stopped.set()
    while _alive:
        alive = _alive.pop()
        alive.stopped.set()
        alive.join(timeout=5)
