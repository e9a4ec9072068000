"""Turn a stage's callbacks into job rows: throttled progress events, checkpoints, cancel polling.

A stage calls ``io.step(fraction, message, **metrics)`` as often as it likes; ``StageReporter.progress``
writes at most one event per ``Settings.event_interval_s`` (plus the last step), keeps ``Job.progress``
(0..1 over the whole pipeline) current, and keys each event by stage and message so a stage that is resumed
after a crash does not write the same event twice. ``should_stop`` reads ``cancel_requested`` at most twice
a second; ``should_pause`` reads ``pause_requested`` (asked only at checkpoints, so unthrottled). A checkpoint
becomes one ``Checkpoint`` row and one event, both idempotent on the step number.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import select

from models.db import session_scope
from models.jobs import record_event
from models.tables import Checkpoint, Job
from worker.claims import Claim, load_owned
from worker.ml.stage_io import CheckpointInfo, Metric

log = logging.getLogger(__name__)
CANCEL_POLL_S = 0.5


class StageReporter:
    """Progress, cancellation and checkpoint callbacks of one claimed stage."""

    def __init__(
        self,
        claim: Claim,
        *,
        interval_s: float,
        overall: Callable[[str, float], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.claim = claim
        self.overall = overall  # (stage, fraction) -> the job's 0..1 progress (Pipeline.progress)
        self.interval_s = interval_s
        self.clock = clock
        self._last_write = -float("inf")
        self._last_poll = -float("inf")
        self._cancel = False
        self.written = 0

    @property
    def stage(self) -> str:
        return self.claim.stage

    def progress(self, fraction: float, message: str, metrics: dict[str, Metric]) -> None:
        now = self.clock()
        if fraction < 1.0 and now - self._last_write < self.interval_s:
            return
        self._last_write = now
        overall = self.overall(self.stage, fraction)
        data: dict[str, Metric] = {k: v for k, v in metrics.items() if k not in ("stage", "progress")}
        data.update(stage=self.stage, progress=overall, stage_progress=round(fraction, 4))
        key = f"{self.stage}:progress:{message or f'{fraction:.4f}'}"
        with session_scope() as s:
            job = load_owned(s, self.claim)
            job.progress = max(job.progress or 0.0, overall)
            text = f"{self.stage}: {message}" if message else f"{self.stage}: {fraction:.0%}"
            if record_event(
                s, job, text, type="metrics" if metrics else "message", data=data, dedupe_key=key
            ):
                self.written += 1

    def should_stop(self) -> bool:
        now = self.clock()
        if self._cancel or now - self._last_poll < CANCEL_POLL_S:
            return self._cancel
        self._last_poll = now
        with session_scope() as s:
            self._cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == self.claim.job_id)))
        return self._cancel

    def should_pause(self) -> bool:
        with session_scope() as s:
            return bool(s.scalar(select(Job.pause_requested).where(Job.id == self.claim.job_id)))

    def checkpoint(self, info: CheckpointInfo) -> None:
        """``info``: ``step_number``, ``epoch``, ``metrics``, ``path`` (from the train stage)."""
        step = int(info["step_number"])
        with session_scope() as s:
            job = load_owned(s, self.claim)
            exists = s.scalar(
                select(Checkpoint.id).where(Checkpoint.job_id == job.id, Checkpoint.step_number == step)
            )
            if exists is None:
                s.add(
                    Checkpoint(
                        job_id=job.id,
                        step_number=step,
                        metrics=dict(info["metrics"]),
                        path=info["path"],
                    )
                )
            data = {"step": step, "epoch": info["epoch"], **info["metrics"]}
            record_event(
                s,
                job,
                f"checkpoint saved at step {step} (epoch {info['epoch']})",
                type="metrics",
                data=data,
                dedupe_key=f"{self.stage}:checkpoint:{step}",
            )
