"""The Celery tasks: one per stage spec, generated from the pipeline, over ``worker.runner.execute``; the
``start`` task of a new job and the ``resume`` task of a resumed one (sent by the dispatcher,
``models/dispatch.py``, which knows no stage), on the short queue; the reaper; webhook delivery; a file's
safety scan (``worker/scan.py``, on the scoring queue).

Tasks take a job id, never rows. ``acks_late`` with ``task_reject_on_worker_lost`` (set on the app) keeps a
message until its stage has finished; the compare-and-set claim makes a second delivery a no-op. Only
``TransientError`` is retried, by Celery's ``autoretry_for``: ``Settings.retry_backoff_s`` doubling per retry
(whole seconds, capped at ten minutes, no jitter), at most ``Settings.task_max_retries`` times; the last try
fails the job with ``transient_error`` instead of looping forever.
"""

from __future__ import annotations

import logging
from typing import Any, TypedDict

from celery import Task, shared_task

from tunegate import queue
from tunegate.errors import TransientError
from tunegate.settings import get_settings
from worker import reaper, runner, scan, webhooks
from worker.stages.all import PIPELINE
from worker.stages.spec import StageSpec

log = logging.getLogger(__name__)
BACKOFF_CAP_S = 600  # Celery's retry_backoff_max
_settings = get_settings()  # read once: Celery fixes a task's retry options when it registers the task


class TaskOptions(TypedDict):
    """The options every task of the worker registers with (Celery's ``shared_task`` keywords)."""

    bind: bool
    acks_late: bool
    reject_on_worker_lost: bool
    ignore_result: bool
    autoretry_for: tuple[type[Exception], ...]
    max_retries: int
    retry_backoff: float
    retry_backoff_max: int
    retry_jitter: bool


_OPTS: TaskOptions = {
    "bind": True,
    "acks_late": True,
    "reject_on_worker_lost": True,
    "ignore_result": True,
    # a TransientError is retried by Celery: base, 2*base, 4*base ... seconds, capped at ten minutes
    "autoretry_for": (TransientError,),
    "max_retries": _settings.task_max_retries,
    "retry_backoff": _settings.retry_backoff_s,
    "retry_backoff_max": BACKOFF_CAP_S,
    # no jitter: a worker runs a task or two at a time (no herd to spread), and full jitter would halve the
    # outage a job rides out before it fails
    "retry_jitter": False,
}


def last_try(task: Task) -> bool:
    """Whether this run is the task's last: Celery's autoretry would re-raise instead of retrying."""
    return int(task.request.retries or 0) >= int(task.max_retries or 0)


def run_stage_task(task: Task, stage: str, job_id: str) -> str:
    try:
        return runner.execute(stage, job_id, settings=get_settings()).status
    except TransientError as exc:
        tries = int(task.request.retries or 0) + 1
        if not last_try(task):
            log.warning(
                "job %s: %s hit a transient error (%s) on try %d; retrying", job_id, stage, exc, tries
            )
            raise  # autoretry_for
        log.error("job %s: %s failed %d times with transient errors; giving up", job_id, stage, tries)
        runner.give_up(stage, job_id, exc)
        return "failed"


def _stage_task(spec: StageSpec[Any, Any, Any]) -> Task:
    def body(self: Task, job_id: str) -> str:
        return run_stage_task(self, spec.name, job_id)

    body.__name__ = body.__qualname__ = spec.name
    task: Task = shared_task(name=spec.task, **_OPTS)(body)
    return task


STAGE_TASKS = {spec.name: _stage_task(spec) for spec in PIPELINE.specs}


@shared_task(name=queue.START, **_OPTS)
def start(self: Task, job_id: str) -> str:
    """A new job: run the pipeline's first stage here when it belongs on this queue, else pass it on."""
    first = PIPELINE.first
    if first.queue == queue.QUEUE_OF[queue.START]:
        return run_stage_task(self, first.name, job_id)
    queue.enqueue(first.task, job_id, queue=first.queue)
    return "sent"


@shared_task(name=queue.RESUME, **_OPTS)
def resume(self: Task, job_id: str) -> str:
    """A resumed job (the API moved it from ``paused`` to ``queued``): send the stage it paused in again,
    running it here when it belongs on this queue. The stage picks up its own checkpoints."""
    spec = runner.stage_of(job_id)
    if spec is None:
        return "skipped"
    if spec.queue == queue.QUEUE_OF[queue.RESUME]:
        return run_stage_task(self, spec.name, job_id)
    queue.enqueue(spec.task, job_id, queue=spec.queue)
    return "sent"


@shared_task(name=queue.REAP, ignore_result=True)
def reap() -> list[str]:
    return reaper.reap()


@shared_task(name=queue.DELIVER_WEBHOOK, acks_late=True, ignore_result=True)
def deliver_webhook(delivery_id: str) -> str:
    """One attempt at one webhook delivery (``worker/webhooks.py`` retries and records it)."""
    return webhooks.deliver(delivery_id)


@shared_task(name=queue.SAFETY_SCAN, **_OPTS)
def safety_scan(self: Task, scan_id: str) -> str:
    """A file's pre-flight safety scan: the score stage and the mitigation plan, without training. Transient
    errors are retried as a stage's are; after ``task_max_retries`` the scan fails. A scan another worker is
    running is looked at again once that worker's heartbeat would be stale (a redelivery after its worker
    died then takes it over; a duplicate of a live one finds it finished)."""
    try:
        outcome = scan.run(scan_id, settings=get_settings())
    except TransientError as exc:
        if not last_try(self):
            log.warning("safety scan %s hit a transient error (%s); retrying", scan_id, exc)
            raise  # autoretry_for
        scan.give_up(scan_id, exc)
        return "failed"
    if outcome == "busy" and not last_try(self):
        raise self.retry(countdown=get_settings().stale_after_s)
    return outcome
