"""The one status transition function and the append-only event log."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.jobs import ALLOWED, KEY_CHARS, TERMINAL, JobStatus, record_event, stored_key, transition
from models.tables import Job, JobEvent, Organization
from tunegate.errors import Conflict


def _job() -> str:
    with session_scope() as s:
        org = Organization(name=f"o-{uuid.uuid4().hex[:12]}", policy={})  # id(s) can repeat
        s.add(org)
        s.flush()
        job = Job(org_id=org.id, model="m", training_file="file-x")
        s.add(job)
        s.flush()
        return job.id


def _events(job_id: str) -> list[JobEvent]:
    with session_scope() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


@pytest.mark.parametrize("src", list(JobStatus))
@pytest.mark.parametrize("dst", list(JobStatus))
def test_transition_table(migrated_home: Path, src: JobStatus, dst: JobStatus) -> None:
    job_id = _job()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.status = src.value
        if src == dst:
            assert transition(s, job, dst, message="same") is False
        elif dst in ALLOWED[src]:
            assert transition(s, job, dst, message="ok") is True
            assert job.status == dst.value
            assert (job.finished_at is not None) == (dst in TERMINAL)
        else:
            with pytest.raises(Conflict):
                transition(s, job, dst, message="illegal")
            assert job.status == src.value


def test_events_carry_stage_progress_and_dedupe(migrated_home: Path) -> None:
    job_id = _job()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert transition(s, job, "queued", message="q", dedupe_key="queued:1")
        assert transition(s, job, "running", message="r", data={"stage": "train", "progress": 0.25})
        assert record_event(s, job, "loss", type="metrics", data={"train_loss": 1.5}, dedupe_key="m1")
        assert not record_event(s, job, "loss", type="metrics", data={"train_loss": 1.5}, dedupe_key="m1")
        err = {"code": "x", "message": "y"}
        assert transition(s, job, "failed", message="boom", level="error", error=err)
        assert job.error == {"code": "x", "message": "y", "param": None}
    events = _events(job_id)
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert all({"stage", "progress"} <= set(e.data) for e in events)
    assert events[1].data == {"stage": "train", "progress": 0.25} and events[2].data["train_loss"] == 1.5
    assert events[2].type == "metrics" and events[3].level == "error"


def test_error_is_kept_only_on_failure(migrated_home: Path) -> None:
    job_id = _job()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, "cancelled", message="c", error={"code": "ignored", "message": "ignored"})
        assert job.error is None


def test_concurrent_writers_get_distinct_seqs(migrated_home: Path) -> None:
    job_id = _job()
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(5):
                with session_scope() as s:
                    job = s.get(Job, job_id)
                    assert job is not None
                    record_event(s, job, f"w{n}-{i}")
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [e.seq for e in _events(job_id)] == list(range(1, 21))


def test_invalid_event_level_is_refused(migrated_home: Path) -> None:
    job_id = _job()
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        with pytest.raises(ValueError, match="level"):
            record_event(s, job, "x", level="debug")


def test_a_long_dedupe_key_is_stored_and_still_dedupes(any_db: str) -> None:
    """A progress event's key holds its message (a screen verdict naming its lines can run past the
    column's 256 characters): it is stored as its head and a digest, and a second write is still refused."""
    job_id = _job()
    long_key = "gate:progress:" + "the training data was flagged, lines 5, 7, 14 " * 20
    other = long_key[:-1] + "!"  # same head, another message
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert record_event(s, job, "m", dedupe_key=long_key)
        assert not record_event(s, job, "m", dedupe_key=long_key)
        assert record_event(s, job, "m", dedupe_key=other)
    keys = [e.dedupe_key for e in _events(job_id)]
    assert len(keys) == 2 and all(k is not None and len(k) == KEY_CHARS for k in keys) and keys[0] != keys[1]
    assert stored_key("short") == "short" and stored_key(None) is None
