"""A small client helper: follow a fine-tuning job until it ends, with a progress bar and its events.

    from cli.client import wait
    job = wait("ftjob-...", base_url="http://127.0.0.1:8000/v1", api_key="tg-...")
    job.status, job.fine_tuned_model, job.error  # the SDK's FineTuningJob

It speaks through the official ``openai`` SDK, whose own retries (``max_retries``) ride out an unreachable API
and 5xx answers: ``wait`` gives its client enough of them to back off for ``unreachable_s`` at least, then
says so (``WaitTimeout``); a 4xx answer (no such job, a bad key) raises the SDK's ``APIStatusError`` at
once, which the CLI shows as the server's message.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import openai
from openai.types.fine_tuning import FineTuningJob, FineTuningJobEvent

from cli.errors import UNREACHABLE_S, WaitTimeout
from cli.progress import Progress

TERMINAL = ("succeeded", "failed", "cancelled")


# a host that drops packets costs each retry the connect timeout, not the whole 30 s
TIMEOUT = openai.Timeout(30, connect=5)


def sdk_client(
    base_url: str, api_key: str, *, max_retries: int = openai.DEFAULT_MAX_RETRIES
) -> openai.OpenAI:
    """The SDK client of the CLI; the SDK retries connection errors, 429 and 5xx answers (its own rules)."""
    return openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=TIMEOUT)


def retries_for(seconds: float) -> int:
    """The fewest SDK retries whose shortest backoff (the SDK's: 0.5 s doubling up to 8 s, less at most 25 %
    jitter) lasts ``seconds``; ours because the SDK's budget is a count and ``follow --timeout``'s is time."""
    waited = 0.0
    for n in range(4):  # 0.375, 0.75, 1.5, 3 s
        if waited >= seconds:
            return n
        waited += 0.75 * 0.5 * 2**n
    return 4 + max(0, math.ceil((seconds - waited) / (0.75 * 8)))


@dataclass(frozen=True)
class JobExtensions:
    """Our extensions of the job object (``api.schemas.JobOut``) that following it reads; the SDK keeps them
    as fields it does not know."""

    stage: str | None
    progress: float
    waiting: str | None  # why the job makes no progress (e.g. no worker is serving queue gpu)

    @classmethod
    def of(cls, job: FineTuningJob) -> JobExtensions:
        extra = job.model_extra or {}
        stage, progress, waiting = extra.get("stage"), extra.get("progress"), extra.get("waiting")
        return cls(
            stage=stage if isinstance(stage, str) else None,
            progress=float(progress) if isinstance(progress, int | float) else 0.0,
            waiting=waiting if isinstance(waiting, str) else None,
        )


def new_events(client: openai.OpenAI, job_id: str, seen: set[str]) -> list[FineTuningJobEvent]:
    """Events not seen yet, oldest first (the API lists newest first; one page is enough when polling)."""
    page = client.fine_tuning.jobs.list_events(job_id, limit=100)
    fresh = [e for e in page.data if e.id not in seen]
    seen.update(e.id for e in fresh)
    return list(reversed(fresh))


def _poll(
    client: openai.OpenAI, job_id: str, seen: set[str], on_event: Callable[[FineTuningJobEvent], None]
) -> FineTuningJob:
    job = client.fine_tuning.jobs.retrieve(job_id)
    for ev in new_events(client, job_id, seen):
        on_event(ev)
    return job


def wait(
    job_id: str,
    *,
    base_url: str,
    api_key: str,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    unreachable_s: float = UNREACHABLE_S,
    progress: bool = True,
    on_event: Callable[[FineTuningJobEvent], None] | None = None,
    position: int = 0,
    label: str = "",
) -> FineTuningJob:
    """Poll ``job_id`` until it is succeeded, failed or cancelled; returns the final job object.
    ``timeout_s`` bounds the whole wait (None: until the job ends); ``position`` and ``label`` place and
    name the bar when several jobs are followed at once."""
    start = time.monotonic()
    last_contact = start
    seen: set[str] = set()
    said_waiting: str | None = None  # the job's `waiting` line last shown (once per change)
    prefix = f"{label}: " if label else ""
    with (
        sdk_client(base_url, api_key, max_retries=retries_for(unreachable_s)) as client,
        Progress(label or job_id, enabled=progress, position=position) as bar,
    ):
        show = on_event or (lambda e: bar.write(f"  {prefix}[{e.level}] {e.message}"))
        while True:
            try:
                job = _poll(client, job_id, seen, show)
            except (openai.APIConnectionError, openai.InternalServerError) as exc:  # past the SDK's retries
                away = time.monotonic() - last_contact
                raise WaitTimeout(
                    f"cannot reach the tunegate API at {base_url} (gave up after {away:.0f}s): "
                    f"{exc.__cause__ or exc}"
                ) from exc
            last_contact = time.monotonic()
            ext = JobExtensions.of(job)
            where = f"{job.status}:{ext.stage or '-'}"
            bar.describe(f"{label} {where}" if label else f"{job_id} {where}")
            bar(ext.progress)
            if ext.waiting != said_waiting and job.status not in TERMINAL:
                said_waiting = ext.waiting
                if said_waiting:  # e.g. no worker is serving queue gpu (models/presence.py)
                    bar.write(f"  {prefix}waiting: {said_waiting}")
            if job.status in TERMINAL:
                return job
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise WaitTimeout(f"job {job_id} still not finished after {timeout_s:.0f}s")
            time.sleep(poll_s)
