"""The Celery tasks: one thin shell per stage over ``worker.runner.execute``, the reaper, webhook delivery.

Tasks take a job id, never rows. ``acks_late`` with ``task_reject_on_worker_lost`` (set on the app) keeps a
message until its stage has finished; the compare-and-set claim makes a second delivery a no-op. Only
``TransientError`` is retried, with exponential backoff and at most ``Settings.task_max_retries`` times; after
that the job fails with ``transient_error`` instead of looping forever.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from tunegate import queue
from tunegate.errors import TransientError
from tunegate.settings import get_settings
from worker import reaper, runner, webhooks

log = logging.getLogger(__name__)
BACKOFF_CAP_S = 600.0


def backoff_s(retries: int, base_s: float) -> float:
    """Delay before retry number ``retries + 1``: base, 2*base, 4*base ... capped at ten minutes."""
    return float(min(BACKOFF_CAP_S, base_s * (2**retries)))


def run_stage_task(task: Task, stage: str, job_id: str) -> str:
    settings = get_settings()
    try:
        return runner.execute(stage, job_id, settings=settings).status
    except TransientError as exc:
        retries = int(task.request.retries or 0)
        if retries >= settings.task_max_retries:
            log.error(
                "job %s: %s failed %d times with transient errors; giving up", job_id, stage, retries + 1
            )
            runner.give_up(stage, job_id, exc)
            return "failed"
        delay = backoff_s(retries, settings.retry_backoff_s)
        log.warning(
            "job %s: %s hit a transient error (%s); retry %d in %.0fs", job_id, stage, exc, retries + 1, delay
        )
        raise task.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc


_OPTS: dict[str, Any] = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
}


@shared_task(name=queue.VALIDATE, **_OPTS)
def validate(self: Task, job_id: str) -> str:
    return run_stage_task(self, "validate", job_id)


@shared_task(name=queue.SCORE, **_OPTS)
def score(self: Task, job_id: str) -> str:
    return run_stage_task(self, "score", job_id)


@shared_task(name=queue.MITIGATE, **_OPTS)
def mitigate(self: Task, job_id: str) -> str:
    return run_stage_task(self, "mitigate", job_id)


@shared_task(name=queue.TRAIN, **_OPTS)
def train(self: Task, job_id: str) -> str:
    return run_stage_task(self, "train", job_id)


@shared_task(name=queue.EVALUATE, **_OPTS)
def evaluate(self: Task, job_id: str) -> str:
    return run_stage_task(self, "evaluate", job_id)


@shared_task(name=queue.GATE, **_OPTS)
def gate(self: Task, job_id: str) -> str:
    return run_stage_task(self, "gate", job_id)


@shared_task(name=queue.REAP, ignore_result=True)
def reap() -> list[str]:
    return reaper.reap()


@shared_task(name=queue.DELIVER_WEBHOOK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at one webhook delivery (``worker/webhooks.py`` retries and records it)."""
    return webhooks.deliver(delivery_id)
