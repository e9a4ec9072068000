"""Stage callbacks become job rows: throttled, idempotent progress events; checkpoints; cancel polling."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, update

from models.db import session_scope
from models.tables import Checkpoint, Job, JobEvent
from tests.worker.jobfactory import make_job
from worker import claims
from worker.events import StageReporter
from worker.stages.all import PIPELINE


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def claim(migrated_home: Path) -> claims.Claim:
    job_id = make_job("tiny", stage="train", status="running")
    with session_scope() as s:
        c = claims.claim(s, job_id, "train", worker="w1", stale_after_s=60)
    assert c is not None
    return c


def _events(job_id: str) -> list[JobEvent]:
    with session_scope() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_progress_is_throttled_but_the_last_step_always_lands(claim: claims.Claim) -> None:
    clock = Clock()
    rep = StageReporter(claim, interval_s=2.0, overall=PIPELINE.progress, clock=clock)
    for i, t in enumerate([0.0, 0.5, 1.0, 2.5, 3.0]):
        clock.t = t
        rep.progress(i / 10, f"step {i}", {"train_loss": 1.0 / (i + 1)})
    rep.progress(1.0, "step 9", {"train_loss": 0.1})
    evs = _events(claim.job_id)
    assert [e.message for e in evs] == ["train: step 0", "train: step 3", "train: step 9"]
    assert all(e.type == "metrics" and e.data["stage"] == "train" for e in evs)
    assert (
        evs[-1].data["stage_progress"] == 1.0 and 0 < evs[0].data["progress"] < evs[-1].data["progress"] <= 1
    )
    assert evs[1].data["train_loss"] == pytest.approx(0.25)
    with session_scope() as s:
        job = s.get(Job, claim.job_id)
        assert job is not None and job.progress == pytest.approx(evs[-1].data["progress"])


def test_a_resumed_stage_does_not_repeat_an_event(claim: claims.Claim) -> None:
    clock = Clock()
    StageReporter(claim, interval_s=0.0, overall=PIPELINE.progress, clock=clock).progress(
        0.5, "epoch 1/2 step 3/6", {}
    )
    StageReporter(claim, interval_s=0.0, overall=PIPELINE.progress, clock=clock).progress(
        0.5, "epoch 1/2 step 3/6", {}
    )
    assert len(_events(claim.job_id)) == 1


def test_should_stop_reads_the_cancel_request(claim: claims.Claim) -> None:
    clock = Clock()
    rep = StageReporter(claim, interval_s=0.0, overall=PIPELINE.progress, clock=clock)
    assert rep.should_stop() is False
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == claim.job_id).values(cancel_requested=True))
    assert rep.should_stop() is False  # polled at most twice a second
    clock.t = 1.0
    assert rep.should_stop() is True


def test_checkpoint_row_and_event_are_written_once(claim: claims.Claim, tmp_path: Path) -> None:
    rep = StageReporter(claim, interval_s=0.0, overall=PIPELINE.progress)
    info = {"step_number": 6, "epoch": 1, "metrics": {"train_loss": 0.7}, "path": str(tmp_path / "epoch-1")}
    rep.checkpoint(info)
    rep.checkpoint(info)
    with session_scope() as s:
        rows = list(s.scalars(select(Checkpoint).where(Checkpoint.job_id == claim.job_id)))
    assert [(r.step_number, r.metrics["train_loss"], r.path) for r in rows] == [(6, 0.7, info["path"])]
    evs = _events(claim.job_id)
    assert len(evs) == 1 and evs[0].data["step"] == 6 and "checkpoint" in evs[0].message


def test_a_replaced_worker_cannot_write_events(claim: claims.Claim) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == claim.job_id).values(claim_token="someone-else"))
    with pytest.raises(claims.ClaimLost):
        StageReporter(claim, interval_s=0.0, overall=PIPELINE.progress).progress(0.5, "x", {})
    assert _events(claim.job_id) == []
