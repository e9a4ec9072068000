"""Compare-and-set claims: one holder per job stage, takeover only after the heartbeat went stale."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from models.base import utcnow
from models.db import session_scope
from models.tables import Job
from tests.worker.jobfactory import make_job
from worker import claims
from worker.stages.all import PIPELINE


@pytest.fixture
def job_id(migrated_home: Path) -> str:
    return make_job("tiny")


def _claim(job_id: str, stage: str, worker: str, stale: float = 60.0) -> claims.Claim | None:
    with session_scope() as s:
        first = stage == PIPELINE.first.name  # a new job (no stage yet) matches only the first stage
        return claims.claim(s, job_id, stage, worker=worker, stale_after_s=stale, first=first)


def _age_heartbeat(job_id: str, seconds: float) -> None:
    with session_scope() as s:
        s.execute(
            update(Job).where(Job.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_second_claim_of_a_held_stage_is_refused(job_id: str) -> None:
    first = _claim(job_id, "validate", "w1")
    assert first is not None and first.attempt == 1
    assert _claim(job_id, "validate", "w2") is None
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.claimed_by == "w1" and job.claim_token == first.token


def test_claim_for_a_stage_the_job_is_not_at_is_refused(job_id: str) -> None:
    assert _claim(job_id, "train", "w1") is None
    c = _claim(job_id, "validate", "w1")
    assert c is not None
    with session_scope() as s:
        assert claims.hand_off(s, c, "score")
    assert _claim(job_id, "validate", "w2") is None  # a late duplicate of the finished stage
    nxt = _claim(job_id, "score", "w2")
    assert nxt is not None and nxt.attempt == 2


def test_stale_holder_is_replaced_and_loses_its_writes(job_id: str) -> None:
    old = _claim(job_id, "validate", "w1")
    assert old is not None
    _age_heartbeat(job_id, 120)
    new = _claim(job_id, "validate", "w2", stale=60)
    assert new is not None and new.token != old.token
    with session_scope() as s:
        assert not claims.heartbeat(s, old)
        assert not claims.hand_off(s, old, "score")
        with pytest.raises(claims.ClaimLost):
            claims.load_owned(s, old)
        assert claims.heartbeat(s, new)


def test_terminal_job_cannot_be_claimed(job_id: str) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="cancelled"))
    assert _claim(job_id, "validate", "w1") is None


def test_release_lets_the_retry_claim_again(job_id: str) -> None:
    c = _claim(job_id, "validate", "w1")
    assert c is not None
    with session_scope() as s:
        assert claims.release(s, c)
    again = _claim(job_id, "validate", "w1")
    assert again is not None and again.attempt == 2


def test_heartbeat_thread_keeps_the_claim_fresh(job_id: str) -> None:
    c = _claim(job_id, "validate", "w1")
    assert c is not None
    _age_heartbeat(job_id, 30)
    with claims.Heartbeat(c, 0.05) as hb:
        time.sleep(0.4)
    assert not hb.lost
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.heartbeat_at is not None
        assert utcnow() - job.heartbeat_at < timedelta(seconds=5)


def test_a_new_job_matches_only_the_first_stage(job_id: str) -> None:
    with session_scope() as s:
        assert (
            claims.claim(s, job_id, "validate", worker="w1", stale_after_s=60) is None
        )  # not told it is first
        assert claims.claim(s, job_id, "validate", worker="w1", stale_after_s=60, first=True) is not None
