"""The Celery app as the API sees it: broker settings, task names, queues. No torch, no stage code.

The API enqueues by task *name* (``enqueue``); ``worker/celery_app.py`` imports this app and registers the
task bodies. Embedded mode uses kombu's SQLAlchemy transport on SQLite, distributed mode Redis.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from celery import Celery

from tunegate.settings import Settings, get_settings

# Stable task names (never rename: queued messages refer to them).
VALIDATE = "tunegate.job.validate"
SCORE = "tunegate.job.score"
MITIGATE = "tunegate.job.mitigate"
TRAIN = "tunegate.job.train"
EVALUATE = "tunegate.job.evaluate"
GATE = "tunegate.job.gate"
REAP = "tunegate.maintenance.reap"
DELIVER_WEBHOOK = "tunegate.webhook.deliver"

# Queues by resource: cpu = validation, mitigation, gate/report, webhooks; gpu = scoring, training,
# evaluation.
QUEUE_OF = {
    VALIDATE: "cpu",
    SCORE: "gpu",
    MITIGATE: "cpu",
    TRAIN: "gpu",
    EVALUATE: "gpu",
    GATE: "cpu",
    REAP: "cpu",
    DELIVER_WEBHOOK: "cpu",
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
        task_annotations=time_limits(settings),
        task_default_queue="cpu",
        broker_transport_options=_transport_options(settings),
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


def time_limits(settings: Settings) -> dict[str, dict[str, int]]:
    """Celery's hard and soft time limit of every task, by its queue (``Settings.*_stage_time_limit_s``)."""
    hard = {"gpu": settings.gpu_stage_time_limit_s, "cpu": settings.cpu_stage_time_limit_s}
    return {
        name: {"time_limit": hard[q], "soft_time_limit": max(1, hard[q] - settings.stage_time_grace_s)}
        for name, q in QUEUE_OF.items()
    }


def _transport_options(settings: Settings) -> dict[str, Any]:
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


def enqueue(task_name: str, *args: Any, countdown: float | None = None) -> str:
    """Send a task by name to its queue; returns the Celery task id."""
    app = celery_app()
    result = app.send_task(task_name, args=list(args), queue=QUEUE_OF[task_name], countdown=countdown)
    return str(result.id)
