"""The reaper requeues jobs whose worker went silent (or whose message was lost), exactly once."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from kombu import Connection
from sqlalchemy import select, update

from models.base import utcnow
from models.db import session_scope
from models.tables import Job, JobEvent
from tests.worker.jobfactory import make_job
from tunegate.settings import get_settings, reset_settings
from worker import claims, reaper


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEGATE_STALE_AFTER_S", "60")
    reset_settings()
    return migrated_home


def _age(job_id: str, **fields: object) -> None:
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == job_id).values(**fields))


def _queued_messages(queue_name: str) -> list[dict]:
    out = []
    with Connection(get_settings().celery_broker_url) as conn:
        q = conn.SimpleQueue(queue_name)
        while True:
            try:
                msg = q.get(block=False)
            except q.Empty:
                break
            out.append({"task": msg.headers["task"], "args": msg.payload[0]})
            msg.ack()
        q.close()
    return out


def test_silent_running_job_is_requeued_once(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    job_id = make_job("tiny", status="running", stage="train", admitted_at=utcnow())
    with session_scope() as s:
        c = claims.claim(s, job_id, "train", worker="dead:1", stale_after_s=60)
    assert c is not None
    assert reaper.reap() == []  # fresh heartbeat: left alone
    _age(job_id, heartbeat_at=utcnow() - timedelta(seconds=120))
    assert reaper.reap() == [job_id]
    assert reaper.reap() == []  # the heartbeat was bumped: not requeued twice
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "queued" and job.claimed_by is None and job.stage == "train"
        ev = s.scalars(select(JobEvent).where(JobEvent.job_id == job_id)).one()
    # the tenant-visible event says what happened; only the operators' log names the worker (host:pid)
    assert ev.level == "warn" and "its worker stopped reporting" in ev.message and ev.data["stage"] == "train"
    assert "dead:1" not in ev.message and "dead:1" not in str(ev.data)
    assert any("dead:1" in r.getMessage() and job_id in r.getMessage() for r in caplog.records)
    assert _queued_messages("gpu") == [{"task": "tunegate.job.train", "args": [job_id]}]


def test_lost_first_message_is_resent(home: Path) -> None:
    job_id = make_job("tiny")
    _age(job_id, created_at=utcnow() - timedelta(seconds=120))
    assert reaper.reap() == []  # waiting for its turn (models/dispatch.py): it was sent nothing to lose
    _age(
        job_id, admitted_at=utcnow() - timedelta(seconds=120), heartbeat_at=utcnow() - timedelta(seconds=120)
    )
    assert reaper.reap() == [job_id]  # admitted, and no worker took it since
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "validating_files"
    assert _queued_messages("short") == [{"task": "tunegate.job.validate", "args": [job_id]}]


def test_finished_jobs_are_never_reaped(home: Path) -> None:
    job_id = make_job("tiny", status="succeeded", stage="gate")
    _age(job_id, heartbeat_at=utcnow() - timedelta(days=2))
    assert reaper.reap() == []
