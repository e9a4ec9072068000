"""The Celery app as the API sees it: broker settings, the task names the API sends, queues. No stage code.

The API knows three job tasks: ``START`` (a new job; the worker runs its pipeline's first stage), ``RESUME``
(a resumed job; the worker sends the stage it paused in again) and ``REAP``. Only the dispatcher
(``models/dispatch.py``) sends ``START`` and ``RESUME``: it admits waiting jobs, fairly across organizations.
Each stage's own task name and queue come from its spec (``worker/stages/spec.py``); ``worker/celery_app.py``
imports this app, registers the task bodies and routes the stage tasks. Embedded mode uses kombu's
SQLAlchemy transport on SQLite, distributed mode Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any, Literal

from celery import Celery

from tunegate.settings import Settings, get_settings

# Stable task names (never rename: queued messages refer to them). Queues by the time and resources a task
# takes: "short" (seconds to minutes: validation, the gate, job start/resume, the reaper, webhook deliveries;
# served by a light worker of its own so they never wait behind training), "cpu" (mitigation) and "gpu"
# (scoring, training, evaluation), both served by the heavy worker (``-Q gpu,cpu``).
Queue = Literal["short", "cpu", "gpu"]
QUEUES: tuple[Queue, ...] = ("short", "cpu", "gpu")
HEAVY_QUEUES = "gpu,cpu"  # the heavy worker's -Q
SHORT_QUEUES = "short"  # the light worker's -Q
START = "tunegate.job.start"
RESUME = "tunegate.job.resume"
REAP = "tunegate.maintenance.reap"
DELIVER_WEBHOOK = "tunegate.webhook.deliver"
# a file's pre-flight safety scan (``worker/scan.py``): the score stage without a job, on the scoring queue
SAFETY_SCAN = "tunegate.safety_scan.run"
QUEUE_OF: dict[str, Queue] = {
    START: "short",
    RESUME: "short",
    REAP: "short",
    DELIVER_WEBHOOK: "short",
    SAFETY_SCAN: "gpu",
}


def make_celery(settings: Settings) -> Celery:
    settings.ensure_dirs()
    app = Celery("tunegate", broker=settings.celery_broker_url)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_routes={name: {"queue": q} for name, q in QUEUE_OF.items()},
        task_annotations=time_limits(settings, QUEUE_OF),
        task_default_queue="short",
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def time_limit(settings: Settings, queue: str) -> tuple[int, int]:
    """(hard, soft) time limit in seconds of a task on ``queue`` (``Settings.*_stage_time_limit_s``; the
    short queue's tasks have the cpu limit)."""
    cpu = settings.cpu_stage_time_limit_s
    hard = {"gpu": settings.gpu_stage_time_limit_s, "cpu": cpu, "short": cpu}[queue]
    return hard, max(1, hard - settings.stage_time_grace_s)


def time_limits(settings: Settings, queues: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """Celery's task annotations: the hard and soft time limit of every task in ``queues`` (name -> queue)."""
    out = {}
    for name, q in queues.items():
        hard, soft = time_limit(settings, q)
        out[name] = {"time_limit": hard, "soft_time_limit": soft}
    return out


def _transport_options(settings: Settings) -> dict[str, float]:
    # kombu's SQLAlchemy transport hands its transport options to create_engine(), which rejects
    # visibility_timeout; that transport has no visibility timeout (the reaper requeues stale jobs).
    if settings.celery_broker_url.startswith("sqla+"):
        return {}
    return {"visibility_timeout": settings.visibility_timeout_s}


@lru_cache(maxsize=1)
def celery_app() -> Celery:
    return make_celery(get_settings())


def reset_celery() -> None:
    celery_app.cache_clear()


def enqueue(task_name: str, *args: Any, queue: str | None = None, countdown: float | None = None) -> str:
    """Send a task by name to ``queue`` (default: its entry in ``QUEUE_OF``); returns the Celery task id."""
    app = celery_app()
    target = queue or QUEUE_OF[task_name]
    result = app.send_task(task_name, args=list(args), queue=target, countdown=countdown)
    return str(result.id)
