"""The body every stage task shares: claim, run (or reuse) the stage, record the outcome, hand on.

    claim (CAS) ──no──> skipped (another worker has it, or the job moved on / ended)
        │
    cancel requested? ──> cancelled
        │
    pause requested (a later stage)? ──> paused   (resume sends this stage again)
        │
    result.json exists? ──yes──> load it        (a redelivery after a crash between finish and hand-off)
        │ no
    spec.build + spec.run under a heartbeat, progress events, cancel polling, checkpoint rows
        │
    spec.apply + the event + hand off in one transaction ──> enqueue the next spec's task
        │ (the job ended or paused)
    dispatch: the next waiting job gets the turn (models/dispatch.py)

Everything stage-specific comes from the stage's ``StageSpec`` (``worker/stages/spec.py``); this module
knows no stage by name. ``pipeline`` defaults to the job pipeline (``worker/stages/all.py``).

Errors: ``JobCancelled`` ends the job ``cancelled`` (the event says where); ``JobPaused`` (a pause request
seen at a checkpoint) moves it to ``paused`` and frees the claim; ``TransientError`` (and
database or broker connection errors, mapped to it) releases the claim and propagates so the Celery task
retries it; every other error fails the job with a coded, readable message. ``ClaimLost`` stops silently:
the worker that took over owns the job now.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.exc import OperationalError as DBOperationalError

from models.db import session_scope
from models.dispatch import dispatch
from models.jobs import TERMINAL, JobStatus, record_event, transition
from models.tables import Job, JobEvent
from tunegate import logs, metrics, queue
from tunegate.errors import (
    ClaimLost,
    InvalidFile,
    JobCancelled,
    JobError,
    JobPaused,
    ModelError,
    StageTimeLimit,
    StorageFull,
    TransientError,
    TunegateError,
)
from tunegate.jsontypes import JsonObject
from tunegate.redact import scrub
from tunegate.settings import Settings, get_settings
from worker import claims
from worker.claims import Claim
from worker.events import StageReporter
from worker.job_view import JobView, job_dir, job_view
from worker.ml.stage_io import ProgressFn, StageIO
from worker.stages.all import PIPELINE
from worker.stages.base import StageResult, result_exists
from worker.stages.spec import Applied, Pipeline, StageContext, StageSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    status: str  # skipped | done | cancelled | paused | failed | lost
    next_stage: str | None = None


@contextmanager
def transient_errors() -> Iterator[None]:
    """Connection-level database and broker failures are the retryable kind."""
    try:
        yield
    except DBOperationalError as exc:
        raise TransientError(f"database unavailable: {exc.orig}") from exc
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        raise TransientError(f"database connection lost: {exc.orig}") from exc
    except (BrokerError, ConnectionError) as exc:
        raise TransientError(f"broker unavailable: {exc}") from exc


def execute(
    stage: str,
    job_id: str,
    *,
    settings: Settings | None = None,
    worker: str | None = None,
    pipeline: Pipeline = PIPELINE,
) -> Outcome:
    """Run ``stage`` of ``job_id`` once, idempotently. Raises only ``TransientError``."""
    settings = settings or get_settings()
    spec = pipeline[stage]
    with logs.bind_job(job_id, stage):  # every log line of this stage names the job
        return _execute(spec, job_id, settings, worker, pipeline)


def _execute(
    spec: StageSpec[Any, Any, Any], job_id: str, settings: Settings, worker: str | None, pipeline: Pipeline
) -> Outcome:
    stage = spec.name
    with transient_errors(), session_scope() as s:
        c = claims.claim(
            s,
            job_id,
            stage,
            worker=worker or claims.worker_id(),
            stale_after_s=settings.stale_after_s,
            first=stage == pipeline.first.name,
        )
    if c is None:
        log.info(
            "job %s: %s not claimable (held elsewhere, moved on or ended); dropping this delivery",
            job_id,
            stage,
        )
        return Outcome("skipped")
    start = time.monotonic()
    try:
        with transient_errors():
            outcome = _execute_claimed(c, spec, pipeline, settings)
    except TransientError:
        metrics.observe_stage(stage, "retried", time.monotonic() - start)
        _release_quietly(c)
        raise
    metrics.observe_stage(stage, outcome.status, time.monotonic() - start)  # done|cancelled|failed|lost
    if outcome.status in ("cancelled", "paused", "failed") or (
        outcome.status == "done" and outcome.next_stage is None
    ):
        dispatch_next(settings)
    return outcome


def dispatch_next(settings: Settings) -> None:
    """A job ended or paused, so its turn came free: let the dispatcher admit the next waiting job now. A
    database or broker failure is logged; the reaper's next pass dispatches."""
    try:
        dispatch(settings)
    except (SQLAlchemyError, BrokerError, ConnectionError) as exc:
        log.warning("could not dispatch the next job (the reaper will): %s", exc)


def _execute_claimed(
    c: Claim, spec: StageSpec[Any, Any, Any], pipeline: Pipeline, settings: Settings
) -> Outcome:
    try:
        view = _begin(c, pipeline, settings)
        if view is None:
            return Outcome("cancelled")
        result = _run(c, spec, pipeline, view, settings)
        nxt = _apply(c, spec, pipeline, result)
    except JobCancelled as exc:
        _end(c, JobStatus.CANCELLED, exc.message, level="warn")
        return Outcome("cancelled")
    except JobPaused as exc:
        _pause(c, exc.message)
        return Outcome("paused")
    except ClaimLost as exc:
        log.warning("%s", exc.message)
        return Outcome("lost")
    except SoftTimeLimitExceeded:  # Celery's soft limit for the stage's queue (Settings.*_stage_time_limit_s)
        log.error("job %s: %s ran past its time limit", c.job_id, c.stage)
        message = f"The {c.stage} stage ran past its time limit on this service; the job was stopped."
        _end(
            c,
            JobStatus.FAILED,
            message,
            level="error",
            error=StageTimeLimit(message).job_error(),
        )
        return Outcome("failed")
    except TransientError:
        raise
    except TunegateError as exc:
        error = _error_of(exc, model=_job_model(c.job_id))
        if error["message"] != exc.message:  # the tenant reads the public text; the operator this one
            log.warning("job %s: %s failed: %s", c.job_id, c.stage, exc.message)
        _end(c, JobStatus.FAILED, error["message"], level="error", error=error)
        return Outcome("failed")
    except (DBOperationalError, BrokerError):
        raise
    except Exception as exc:  # a bug or resource failure in a stage: end the job with a clear error, log it
        if disk_full(exc):  # retried (the stage left nothing half-written); its message names no path
            log.error("job %s: %s ran out of disk space: %s", c.job_id, c.stage, exc)
            raise StorageFull(
                f"the server ran out of disk space while the {c.stage} stage wrote its output"
            ) from exc
        log.exception("job %s: %s crashed", c.job_id, c.stage)
        # The exception's text may name server paths or storage keys: the tenant gets the job id to quote.
        message = (
            f"The {c.stage} stage hit an internal error; the job cannot continue. The operators have the "
            f"details (job {c.job_id})."
        )
        _end(
            c,
            JobStatus.FAILED,
            message,
            level="error",
            error=TunegateError(message, code="internal_error").job_error(),
        )
        return Outcome("failed")
    if nxt is not None:
        _send(nxt, c.job_id)
        return Outcome("done", nxt.name)
    return Outcome("done")


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException) -> bool:
    """True when ``exc`` or an exception it was raised from is a full disk (torch and safetensors wrap the
    ``OSError`` in their own exception types, keeping its text)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _send(spec: StageSpec[Any, Any, Any], job_id: str) -> None:
    try:
        queue.enqueue(spec.task, job_id, queue=spec.queue)
    except (
        BrokerError,
        ConnectionError,
    ) as exc:  # the job row already points at `stage`: the reaper resends it
        log.warning("job %s: could not enqueue %s (%s); the reaper will requeue it", job_id, spec.name, exc)


def stage_of(job_id: str, pipeline: Pipeline = PIPELINE) -> StageSpec[Any, Any, Any] | None:
    """The spec of the stage a queued job sits at (a resumed job's); None when the job is gone or not
    queued (cancelled again, or paused again before this message arrived)."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return None
        return pipeline[job.stage] if job.stage else pipeline.first


def _job_model(job_id: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(Job.model).where(Job.id == job_id))


def _error_of(exc: TunegateError, *, model: str | None) -> JobError:
    """The job's tenant-visible error: a base model that cannot be loaded is "not available" (how to
    prepare it is the operators' business); any other message is scrubbed of server paths and keys."""
    code = "invalid_training_file" if isinstance(exc, InvalidFile) else exc.code
    if isinstance(exc, ModelError):
        message = (
            f"The base model {model!r} is not available on this service right now; try again later or "
            "choose another base model."
        )
        return ModelError(message, param="model").job_error()
    public = scrub(exc.message, get_settings())
    return TunegateError(public, param=exc.param, code=code or "job_failed").job_error()


def _begin(c: Claim, pipeline: Pipeline, settings: Settings) -> JobView | None:
    """Cancel a job asked to stop; otherwise mark the stage started (or resumed) and snapshot the job."""
    with session_scope() as s:
        job = claims.load_owned(s, c)
        if job.cancel_requested:
            transition(
                s,
                job,
                JobStatus.CANCELLED,
                message=f"cancelled before {c.stage} started",
                level="warn",
                data={"stage": c.stage},
                dedupe_key=f"{c.stage}:cancelled",
            )
            return None
        if job.pause_requested and c.stage != pipeline.first.name:  # a stage boundary is a checkpoint
            raise JobPaused(f"paused before {c.stage} started")
        first = (
            s.scalar(
                select(JobEvent.id).where(
                    JobEvent.job_id == job.id, JobEvent.dedupe_key == f"{c.stage}:started"
                )
            )
            is None
        )
        key = f"{c.stage}:started" if first else f"{c.stage}:resumed:{c.attempt}"
        msg = (
            f"{c.stage} started" if first else f"{c.stage} resumed after an interruption (claim #{c.attempt})"
        )
        log.info("job %s: %s claimed by worker %s (attempt %d)", c.job_id, c.stage, c.worker, c.attempt)
        data: JsonObject = {
            "stage": c.stage,
            "progress": max(job.progress or 0.0, pipeline.progress(c.stage, 0.0)),
            "attempt": c.attempt,
        }
        if c.stage != pipeline.first.name and job.status == JobStatus.QUEUED:
            transition(s, job, JobStatus.RUNNING, message=msg, data=data, dedupe_key=key)
        else:
            record_event(s, job, msg, data=data, dedupe_key=key)
        job.artifacts_dir = str(job_dir(settings, job.id))
        return job_view(s, job, settings)


def _run(
    c: Claim, spec: StageSpec[Any, Any, Any], pipeline: Pipeline, view: JobView, settings: Settings
) -> StageResult:
    ctx = StageContext(view, job_dir(settings, c.job_id), settings)
    out = ctx.dir_of(spec)
    if result_exists(out):
        log.info("job %s: %s output exists in %s; reusing it", c.job_id, c.stage, out)
        reused: StageResult = spec.result.load(out)
        return reused
    rep = StageReporter(c, interval_s=settings.event_interval_s, overall=pipeline.progress)
    _, soft = queue.time_limit(settings, spec.queue)
    io = StageIO(
        out,
        progress=rep.progress,
        should_stop=rep.should_stop,
        stage=c.stage,
        deadline=time.monotonic() + soft,
        on_checkpoint=rep.checkpoint if spec.checkpoints else None,
        should_pause=rep.should_pause,
    )
    with claims.Heartbeat(c, settings.heartbeat_s) as hb:
        cfg, inputs = spec.build(ctx, io)
        result: StageResult = spec.run(cfg, inputs)
    if hb.lost:
        raise ClaimLost(
            f"job {c.job_id}: lost the claim on {c.stage} while it ran; not recording its outcome"
        )
    return result


def _apply(
    c: Claim, spec: StageSpec[Any, Any, Any], pipeline: Pipeline, result: StageResult
) -> StageSpec[Any, Any, Any] | None:
    """The spec's mark on the job, its event (keyed ``<stage>:done``, so a re-applied stage writes nothing
    twice) and the hand-off to the next spec, in one transaction; returns that spec (None: the job ended)."""
    with session_scope() as s:
        job = claims.load_owned(s, c)
        done: Applied = spec.apply(s, job, result)
        data = {"stage": spec.name, "progress": pipeline.progress(spec.name, 1.0), **done.data}
        key = f"{spec.name}:done"
        if done.status is None:
            record_event(s, job, done.message, type="metrics", data=data, dedupe_key=key)
        else:
            transition(
                s,
                job,
                done.status,
                message=done.message,
                level=done.level,
                data=data,
                error=done.error,
                dedupe_key=key,
            )
        nxt = None if done.status in TERMINAL else pipeline.after(spec)
        if nxt is not None and not claims.hand_off(s, c, nxt.name):
            raise ClaimLost(f"job {c.job_id}: lost the claim before handing {c.stage} on")
        return nxt


def _end(c: Claim, to: JobStatus, message: str, *, level: str, error: JobError | None = None) -> None:
    with session_scope() as s:
        job = s.get(Job, c.job_id, populate_existing=True)
        if job is None or job.status in TERMINAL or job.claim_token != c.token:
            return
        data: JsonObject = {"stage": c.stage, "progress": job.progress}
        transition(
            s,
            job,
            to,
            message=message,
            level=level,
            data=data,
            error=error,
            dedupe_key=f"{c.stage}:{to.value}",
        )


def _pause(c: Claim, message: str) -> None:
    """Move the job to ``paused`` (which frees the claim); the stage's checkpoints stay for the resume."""
    with session_scope() as s:
        job = s.get(Job, c.job_id, populate_existing=True)
        if job is None or job.status in TERMINAL or job.claim_token != c.token:
            return
        data: JsonObject = {"stage": c.stage, "progress": job.progress}
        log.info("job %s: %s", c.job_id, message)
        transition(
            s, job, JobStatus.PAUSED, message=message, data=data, dedupe_key=f"{c.stage}:paused:{c.attempt}"
        )


def _release_quietly(c: Claim) -> None:
    try:
        with session_scope() as s:
            claims.release(s, c)
    except DBOperationalError as exc:  # the database is the transient problem: the reaper will free it
        log.warning("job %s: could not release %s after a transient error: %s", c.job_id, c.stage, exc)


def give_up(stage: str, job_id: str, exc: Exception) -> None:
    """Fail a job whose stage kept hitting transient errors past ``task_max_retries``; the error's code is
    the last error's own (e.g. ``storage_full``), else ``transient_error``."""
    code = exc.code if isinstance(exc, TunegateError) and exc.code != "transient" else None
    code = code or "transient_error"
    with session_scope() as s:
        job = s.get(Job, job_id)
        if job is None or job.status in TERMINAL or job.stage != stage or job.claimed_by is not None:
            return
        log.error("job %s: %s gave up after repeated transient errors: %s", job_id, stage, exc)
        reason = exc.message if isinstance(exc, StorageFull) else "database or job queue unavailable"
        message = f"{stage} gave up after repeated transient errors ({reason})"
        transition(
            s,
            job,
            JobStatus.FAILED,
            level="error",
            data={"stage": stage},
            message=message,
            error=TunegateError(message, code=code).job_error(),
            dedupe_key=f"{stage}:gave_up",
        )
    dispatch_next(get_settings())


ProgressFactory = Callable[[str], ProgressFn]


def run_local(
    view: JobView,
    out: Path,
    settings: Settings,
    *,
    progress_for: ProgressFactory | None = None,
    on_reuse: Callable[[str, Path], None] | None = None,
    pipeline: Pipeline = PIPELINE,
) -> list[StageResult]:
    """The same specs in-process, without a database or a broker (``tunegate finetune``): each stage is built
    from ``view`` and the results before it exactly as a worker builds it, and a stage whose result exists in
    ``out/<stage>`` is reused (the same resume rule). Returns every stage's result, in order. Nothing is
    published to an object store (``storage_url``): a local run's artifacts stay in ``out``. A stage whose
    result ends the job (``StageResult.failure``, e.g. mitigation refusing a mostly flagged file) raises
    that error, before any later stage runs."""
    ctx = StageContext(view, out, settings.model_copy(update={"storage_url": None}))
    results: list[StageResult] = []
    for spec in pipeline.specs:
        d = ctx.dir_of(spec)
        if result_exists(d):
            if on_reuse is not None:
                on_reuse(spec.name, d)
            results.append(spec.result.load(d))
        else:
            io = StageIO(d, stage=spec.name)
            if progress_for is not None:
                io.progress = progress_for(spec.name)
            cfg, inputs = spec.build(ctx, io)
            results.append(spec.run(cfg, inputs))
        failure = results[-1].failure()
        if failure is not None:
            raise failure
    return results
