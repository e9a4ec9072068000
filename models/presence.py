"""Which queues live workers serve, and what an admitted job waits for (issue 28: "a job waiting on a queue
that no worker serves says so", in ``tunegate follow`` and in the console).

Every Celery worker keeps one ``worker_presence`` row (its node name, its queues, its pipeline's queue of
each stage, its pid) fresh every ``Settings.heartbeat_s`` from a daemon thread (``PresenceThread``, started
when the worker is ready; the row is deleted when it stops). The database is what the API and every worker
share in both modes (SQLite embedded, PostgreSQL distributed), unlike Celery's broadcast ``inspect``, which a
solo worker running a stage leaves unanswered and kombu's SQLAlchemy transport does not carry. A row not
refreshed for ``STALE_BEATS`` beats is a worker that is gone (killed before its shutdown); the stage map is
taken from any row, as only the workers know the stages.

An admitted, unfinished job that no worker holds waits on a queue: the short one for the dispatcher's START
or RESUME message, then (or, between two stages, only) the queue of its stage. ``waiting_message`` says "no
worker is serving queue gpu" for the first such queue without a live worker ("no worker is running" when
none ever told the stage's queue), once the job has waited ``GRACE_BEATS`` beats since its admission or last
hand-off (a stack that just started has not written its rows yet). The served queues are cached
``SERVED_CACHE_S`` seconds per process, and read only for a job past that grace.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, select
from sqlalchemy.exc import SQLAlchemyError

from models.base import utcnow
from models.db import session_scope
from models.tables import WorkerPresence
from tunegate import queue
from tunegate.settings import Settings

log = logging.getLogger(__name__)

STALE_BEATS = 3  # a row older than this many heartbeats is a worker that is gone
GRACE_BEATS = 2  # a job says it waits on an unserved queue only after waiting this many heartbeats
SERVED_CACHE_S = 5.0  # how long one process trusts the served queues it read
UNFINISHED = ("validating_files", "queued", "running")
FIRST_MESSAGE = ("validating_files", "queued")  # a START or RESUME message goes to the short queue first


@dataclass(frozen=True)
class Served:
    queues: frozenset[str]  # served by at least one live worker
    stage_queue: Mapping[str, str] = field(default_factory=dict)  # each stage's queue, as the workers say


_cache_lock = threading.Lock()
_cache: tuple[float, Served] | None = None  # (monotonic time read, what was read)


def beat(name: str, queues: Iterable[str], stage_queues: Mapping[str, str], pid: int) -> None:
    """Record that worker ``name`` serves ``queues`` now (``stage_queues``: its pipeline's stage -> queue)."""
    joined = ",".join(sorted(set(queues)))
    with session_scope() as s:
        row = s.get(WorkerPresence, name)
        if row is None:
            s.add(WorkerPresence(name=name, queues=joined, stage_queues=dict(stage_queues), pid=pid))
        else:
            row.queues, row.stage_queues, row.pid, row.seen_at = joined, dict(stage_queues), pid, utcnow()


def leave(name: str) -> None:
    """Worker ``name`` stopped: its queues are no longer served by it."""
    with session_scope() as s:
        s.execute(delete(WorkerPresence).where(WorkerPresence.name == name))


def served_queues(conn: Connection, settings: Settings, *, now: datetime | None = None) -> Served:
    """What the live workers serve (read now, and cached for the next ``SERVED_CACHE_S`` seconds)."""
    global _cache
    fresh_after = (now or utcnow()) - timedelta(seconds=STALE_BEATS * settings.heartbeat_s)
    rows = conn.execute(
        select(WorkerPresence.queues, WorkerPresence.stage_queues, WorkerPresence.seen_at).order_by(
            WorkerPresence.seen_at
        )
    ).all()
    stage_queue: dict[str, str] = {}
    for row in rows:  # oldest first: the newest pipeline wins
        stage_queue.update(row.stage_queues or {})
    live = frozenset(q for row in rows if row.seen_at >= fresh_after for q in row.queues.split(",") if q)
    served = Served(live, stage_queue)
    with _cache_lock:
        _cache = (time.monotonic(), served)
    return served


def cached_served() -> Served | None:
    """What was read less than ``SERVED_CACHE_S`` ago in this process; None: read it again."""
    with _cache_lock:
        if _cache is None or time.monotonic() - _cache[0] > SERVED_CACHE_S:
            return None
        return _cache[1]


def reset_cache() -> None:
    global _cache
    with _cache_lock:
        _cache = None


def waits_on_a_queue(job: Any) -> bool:
    """``job`` (a ``Job`` or a row with its status, admitted_at and claimed_by) is admitted, unfinished and
    held by no worker: its next message waits on a queue."""
    return job.admitted_at is not None and job.claimed_by is None and job.status in UNFINISHED


def waited_past_grace(job: Any, settings: Settings, *, now: datetime | None = None) -> bool:
    """``job`` has waited since its admission or its last hand-off (``heartbeat_at``) for over the grace."""
    since = job.heartbeat_at or job.admitted_at or job.created_at
    grace = timedelta(seconds=GRACE_BEATS * settings.heartbeat_s)
    return since is not None and (now or utcnow()) - since > grace


def candidate(job: Any, settings: Settings, *, now: datetime | None = None) -> bool:
    """Worth reading the served queues for: ``job`` waits on a queue, and has for over the grace."""
    return waits_on_a_queue(job) and waited_past_grace(job, settings, now=now)


def unserved_message(job: Any, served: Served) -> str | None:
    """Says "no worker is serving queue Q" for the first queue ``job`` waits on with no live worker."""
    if not waits_on_a_queue(job):
        return None
    stage = served.stage_queue.get(job.stage) if job.stage else None
    first = [queue.QUEUE_OF[queue.START]] if job.status in FIRST_MESSAGE else []
    missing = next((q for q in [*first, *([stage] if stage else [])] if q not in served.queues), None)
    if missing is not None:
        return f"no worker is serving queue {missing}"
    if job.stage and stage is None and not served.queues:  # no worker ever said which queue the stage is on
        return "no worker is running"
    return None


def waiting_message(job: Any, conn: Connection, settings: Settings) -> str | None:
    """Why ``job`` makes no progress when no live worker serves the queue it waits on (None otherwise)."""
    if not candidate(job, settings):
        return None
    served = cached_served()
    return unserved_message(job, served if served is not None else served_queues(conn, settings))


class PresenceThread(threading.Thread):
    """A worker's presence: its row refreshed every ``heartbeat_s`` from a daemon thread (a solo worker's
    main thread may be inside a stage for an hour), deleted when the worker stops."""

    def __init__(
        self, settings: Settings, name: str, queues: Iterable[str], stage_queues: Mapping[str, str]
    ) -> None:
        super().__init__(name="tunegate-presence", daemon=True)
        self.settings, self.worker, self.queues = settings, name, list(queues)
        self.stage_queues = dict(stage_queues)
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                beat(self.worker, self.queues, self.stage_queues, os.getpid())
            except SQLAlchemyError as exc:  # the database is away: the next beat tries again
                log.warning("worker presence of %s not recorded: %s", self.worker, exc)
            if self.stopped.wait(self.settings.heartbeat_s):
                break
        try:
            leave(self.worker)
        except SQLAlchemyError as exc:  # its row goes stale after STALE_BEATS beats instead
            log.warning("worker presence of %s not removed: %s", self.worker, exc)

    def stop(self, timeout_s: float = 5.0) -> None:
        self.stopped.set()
        self.join(timeout=timeout_s)
