"""A small client helper: follow a fine-tuning job until it ends, with a progress bar and its events.

    from cli.client import wait
    job = wait("ftjob-...", base_url="http://127.0.0.1:8000/v1", api_key="tg-...")
    job["status"], job["fine_tuned_model"], job["error"]

Plain httpx (no SDK needed); the official ``openai`` SDK works against the same API for everything else.
Transient connection errors and 5xx answers are retried until ``timeout_s``; a 4xx raises at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger(__name__)
TERMINAL = ("succeeded", "failed", "cancelled")
RETRYABLE = (httpx.TransportError,)


class WaitTimeout(TimeoutError):
    """The job did not end within ``timeout_s``."""


def _get(client: httpx.Client, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    r = client.get(path, params=params)
    if r.status_code >= 500:
        raise httpx.TransportError(f"server answered {r.status_code}")
    r.raise_for_status()
    data: dict[str, Any] = r.json()
    return data


def new_events(client: httpx.Client, job_id: str, seen: set[str]) -> list[dict[str, Any]]:
    """Events not seen yet, oldest first (the API lists newest first; one page is enough when polling)."""
    page = _get(client, f"fine_tuning/jobs/{job_id}/events", {"limit": 100})
    fresh = [e for e in page.get("data", []) if e["id"] not in seen]
    seen.update(e["id"] for e in fresh)
    return list(reversed(fresh))


def wait(
    job_id: str,
    *,
    base_url: str,
    api_key: str,
    poll_s: float = 1.0,
    timeout_s: float | None = None,
    progress: bool = True,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    position: int = 0,
    label: str = "",
) -> dict[str, Any]:
    """Poll ``job_id`` until it is succeeded, failed or cancelled; returns the final job object.
    ``position`` and ``label`` place and name the bar when several jobs are followed at once."""
    from tqdm import tqdm

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {api_key}"}
    seen: set[str] = set()
    bar = tqdm(
        total=1000,
        desc=label or job_id[-12:],
        disable=not progress,
        position=position,
        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}",
    )
    prefix = f"{label}: " if label else ""
    with httpx.Client(base_url=base_url.rstrip("/") + "/", headers=headers, timeout=30) as client:
        try:
            while True:
                try:
                    job = _get(client, f"fine_tuning/jobs/{job_id}")
                    for ev in new_events(client, job_id, seen):
                        (on_event or (lambda e: bar.write(f"  {prefix}[{e['level']}] {e['message']}")))(ev)
                except RETRYABLE as exc:
                    log.warning("polling %s: %s (retrying)", job_id, exc)
                else:
                    bar.n = int(1000 * float(job.get("progress") or 0.0))
                    where = f"{job['status']}:{job.get('stage') or '-'}"
                    bar.set_description(f"{label} {where}" if label else f"{job_id} {where}")
                    if job["status"] in TERMINAL:
                        return job
                if deadline is not None and time.monotonic() > deadline:
                    raise WaitTimeout(f"job {job_id} still not finished after {timeout_s}s")
                time.sleep(poll_s)
        finally:
            bar.close()
