"""The stage task body (``worker.runner.execute``) on real stages with a tiny model, no broker round trip.

Covers the claim/skip/reuse logic, domain errors failing the job with a coded message, cancellation, the
transient-error mapping, and a duplicate delivery doing nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery.exceptions import Retry
from celery.signals import task_retry
from sqlalchemy import Connection, select, update

from models.db import reset_engine, session_scope
from models.tables import Checkpoint, Job, JobEvent
from tests.worker.jobfactory import chat_rows, make_job, use_tiny
from tunegate.errors import TransientError
from tunegate.settings import get_settings, reset_settings
from worker import runner, tasks
from worker.job_view import job_dir

# Tests score with the cheapest scorer: the three scorers are covered by tests/worker/scoring and stages.
TEST_OVERRIDES = {"score": {"scorers": ["representation"], "batch_size": 16}}


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(TEST_OVERRIDES))
    return migrated_home


def _job(job_id: str) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _events(job_id: str) -> list[JobEvent]:
    with session_scope() as s:
        return list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))


def test_validate_moves_the_job_to_queued_and_hands_on(home: Path) -> None:
    job_id = make_job("tiny")
    out = runner.execute("validate", job_id)
    assert out == runner.Outcome("done", "score")
    job = _job(job_id)
    assert (job.status, job.stage, job.claimed_by, job.attempt) == ("queued", "score", None, 1)
    assert job.artifacts_dir == str(get_settings().jobs_path / job_id)
    msgs = [e.message for e in _events(job_id)]
    assert msgs[0] == "validate started" and msgs[-1].startswith("validated 12 training examples")


def test_duplicate_delivery_does_no_work_twice(home: Path) -> None:
    job_id = make_job("tiny")
    runner.execute("validate", job_id)
    n_events = len(_events(job_id))
    stats = (job_dir(get_settings(), job_id) / "validate") / "stats.json"
    mtime = stats.stat().st_mtime_ns
    assert runner.execute("validate", job_id).status == "skipped"
    assert len(_events(job_id)) == n_events and stats.stat().st_mtime_ns == mtime


def test_finished_output_is_reused_after_a_crash_before_hand_off(home: Path) -> None:
    job_id = make_job("tiny")
    runner.execute("validate", job_id)
    stats = (job_dir(get_settings(), job_id) / "validate") / "stats.json"
    mtime = stats.stat().st_mtime_ns
    with session_scope() as s:  # as if the worker died after writing result.json, before its commit
        s.execute(update(Job).where(Job.id == job_id).values(status="validating_files", stage="validate"))
    assert runner.execute("validate", job_id).status == "done"
    assert stats.stat().st_mtime_ns == mtime
    messages = [e.message for e in _events(job_id)]
    assert messages.count("validate resumed after an interruption (claim #2)") == 1


def test_invalid_file_fails_the_job_naming_the_line(home: Path) -> None:
    rows = chat_rows(12)
    rows[2]["messages"][1]["content"] = "word " * 9000
    job_id = make_job("tiny", rows)
    assert runner.execute("validate", job_id).status == "failed"
    job = _job(job_id)
    assert job.status == "failed" and job.error is not None
    assert job.error["code"] == "invalid_training_file" and "line 3" in job.error["message"]
    assert _events(job_id)[-1].level == "error"


def test_cancel_requested_before_a_stage_cancels_the_job(home: Path) -> None:
    job_id = make_job("tiny", status="running", stage="score", cancel_requested=True)
    assert runner.execute("score", job_id).status == "cancelled"
    job = _job(job_id)
    assert job.status == "cancelled" and _events(job_id)[-1].data["stage"] == "score"
    assert not ((job_dir(get_settings(), job_id) / "score") / "result.json").exists()


def test_pipeline_runs_through_training_with_checkpoints(home: Path) -> None:
    job_id = make_job("tiny", chat_rows(12), hyperparameters={"n_epochs": 2, "batch_size": 4})
    for stage in ("validate", "score", "mitigate", "train"):
        assert runner.execute(stage, job_id).status == "done", stage
    job = _job(job_id)
    assert (job.status, job.stage) == ("running", "evaluate") and (job.trained_tokens or 0) > 0
    evs = _events(job_id)
    assert [e.seq for e in evs] == list(range(1, len(evs) + 1))
    assert all("stage" in e.data and 0 <= e.data["progress"] <= 1 for e in evs)
    with session_scope() as s:
        steps = [c.step_number for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))]
    assert len(steps) == 2 and steps == sorted(steps)
    assert runner.execute("score", job_id).status == "skipped"  # a late duplicate of a finished stage
    assert len(_events(job_id)) == len(evs)


def test_database_outage_is_a_transient_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "TUNEGATE_DATABASE_URL", "postgresql+psycopg://root@127.0.0.1:1/none?connect_timeout=2"
    )
    reset_settings()
    reset_engine()
    with pytest.raises(TransientError, match="database unavailable"):
        runner.execute("validate", "ftjob-missing")


class _Retries:
    """The countdown of every retry Celery schedules (its ``task_retry`` signal), while connected."""

    def __init__(self) -> None:
        self.countdowns: list[float] = []

    def __call__(self, sender: object, reason: Retry, **_: object) -> None:
        self.countdowns.append(float(reason.when))

    def __enter__(self) -> _Retries:
        task_retry.connect(self, weak=False)
        return self

    def __exit__(self, *_: object) -> None:
        task_retry.disconnect(self)


def test_a_transient_error_is_retried_by_celery_with_doubling_capped_backoff_then_fails_the_job(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stage task's retries are Celery's ``autoretry_for`` (run eagerly here: ``apply`` runs each retry
    at once, the countdown is what a worker would wait); its last try gives up and fails the job."""
    tried: list[str] = []
    gave_up: list[tuple[str, str, str]] = []

    def unavailable(stage: str, job_id: str, settings: object = None) -> runner.Outcome:
        tried.append(stage)
        raise TransientError("database unavailable")

    monkeypatch.setattr(runner, "execute", unavailable)
    monkeypatch.setattr(
        runner, "give_up", lambda stage, job_id, exc: gave_up.append((stage, job_id, str(exc)))
    )
    task = tasks.STAGE_TASKS["validate"]
    base = int(get_settings().retry_backoff_s)
    assert task.max_retries == get_settings().task_max_retries
    monkeypatch.setattr(task, "max_retries", 8)  # enough retries to reach the cap
    with _Retries() as retries:
        result = task.apply(args=["ftjob-x"])
    assert result.get() == "failed"
    assert tried == ["validate"] * 9 and gave_up == [("validate", "ftjob-x", "database unavailable")]
    assert retries.countdowns == [min(tasks.BACKOFF_CAP_S, base * 2**i) for i in range(8)]
    assert retries.countdowns[-1] == tasks.BACKOFF_CAP_S


def test_a_scan_retries_transient_errors_and_a_busy_scan_then_gives_up(
    tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import scan

    gave_up: list[str] = []
    monkeypatch.setattr(scan, "give_up", lambda scan_id, exc: gave_up.append(scan_id))
    n = get_settings().task_max_retries

    def unavailable(scan_id: str, settings: object = None) -> str:
        raise TransientError("database unavailable")

    monkeypatch.setattr(scan, "run", unavailable)
    with _Retries() as retries:
        assert tasks.safety_scan.apply(args=["ss-x"]).get() == "failed"
    assert gave_up == ["ss-x"] and len(retries.countdowns) == n
    monkeypatch.setattr(scan, "run", lambda scan_id, settings=None: "busy")
    with _Retries() as retries:  # another worker runs it: looked at again once its heartbeat would be stale
        assert tasks.safety_scan.apply(args=["ss-y"]).get() == "busy"
    assert retries.countdowns == [get_settings().stale_after_s] * n and gave_up == ["ss-x"]


def _results(job_id: str) -> list[dict[str, str]]:
    """The job's results file, read back through its File row (what files.content serves)."""
    import csv
    import io

    from models.tables import File
    from tunegate.storage import get_storage

    job = _job(job_id)
    (fid,) = job.result_files
    with session_scope() as s:
        row = s.get(File, fid)
        assert row is not None and row.org_id == job.org_id and row.purpose == "fine-tune-results"
        key = row.storage_key
    with get_storage().open(key) as fh:
        return list(csv.DictReader(io.StringIO(fh.read().decode())))


def test_pause_at_a_stage_and_an_epoch_then_resume_to_the_end(home: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import event

    from models.base import utcnow
    from models.jobs import resume
    from tests.worker.jobfactory import store_file
    from worker.reaper import stale_jobs
    from worker.stages.train import TrainResult

    job_id = make_job("tiny", chat_rows(12), hyperparameters={"n_epochs": 2, "batch_size": 4})
    with session_scope() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(validation_file=store_file(_job(job_id).org_id, chat_rows(4), "valid.jsonl"))
        )
    assert runner.execute("validate", job_id).status == "done"

    def pause_and_resume(stage: str) -> None:
        job = _job(job_id)
        assert (job.status, job.stage, job.claimed_by, job.pause_requested) == ("paused", stage, None, False)
        with session_scope() as s:  # the reaper leaves a paused job alone, however old its heartbeat
            assert job_id not in stale_jobs(s, get_settings(), now=utcnow() + timedelta(days=30))
        assert runner.execute(stage, job_id).status == "skipped"  # a late message does nothing
        with session_scope() as s:
            row = s.get(Job, job_id)
            assert row is not None
            resume(s, row)
        spec = runner.stage_of(job_id)  # what the resume task sends
        assert spec is not None and spec.name == stage

    with session_scope() as s:  # asked between stages: the next stage pauses before it starts
        s.execute(update(Job).where(Job.id == job_id).values(pause_requested=True))
    assert runner.execute("score", job_id).status == "paused"
    assert not (job_dir(get_settings(), job_id) / "score").exists()
    pause_and_resume("score")
    for stage in ("score", "mitigate"):
        assert runner.execute(stage, job_id).status == "done", stage

    def ask_to_pause(mapper: object, connection: Connection, target: Checkpoint) -> None:
        """A pause request arriving while epoch 1's checkpoint is recorded (as jobs.pause would)."""
        connection.execute(update(Job).where(Job.id == target.job_id).values(pause_requested=True))

    event.listen(Checkpoint, "after_insert", ask_to_pause, once=True)
    try:
        assert runner.execute("train", job_id).status == "paused"
    finally:
        if event.contains(Checkpoint, "after_insert", ask_to_pause):
            event.remove(Checkpoint, "after_insert", ask_to_pause)
    train_dir = job_dir(get_settings(), job_id) / "train"
    assert sorted(p.name for p in (train_dir / "checkpoints").iterdir()) == ["epoch-1"]
    assert not (train_dir / "result.json").exists()
    assert _events(job_id)[-1].message.startswith("paused during train: after epoch 1/2")
    pause_and_resume("train")

    assert runner.execute("train", job_id).status == "done"
    res = TrainResult.load(train_dir)
    assert (res.resumed_from_epoch, res.epochs) == (1, 2)
    with session_scope() as s:
        cks = list(
            s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step_number))
        )
        epoch_ends = [c.step_number for c in cks]
        assert all("valid_loss" in c.metrics and "valid_mean_token_accuracy" in c.metrics for c in cks)
    rows = _results(job_id)
    assert [int(r["step"]) for r in rows] == list(range(1, res.steps + 1))  # the steps before the pause too
    assert len(epoch_ends) == 2 and epoch_ends[-1] == res.steps
    for r in rows:
        assert float(r["train_loss"]) > 0 and 0 <= float(r["train_accuracy"]) <= 1
        at_epoch_end = int(r["step"]) in epoch_ends
        assert (r["valid_loss"] != "") == at_epoch_end and (
            r["valid_mean_token_accuracy"] != ""
        ) == at_epoch_end
    assert any(e.data.get("valid_loss") for e in _events(job_id) if e.type == "metrics")


def _sent(queue_name: str) -> list[tuple[str, list[object]]]:
    """Drain a broker queue: (task name, args) of every message sent to it."""
    from tunegate.queue import celery_app

    out: list[tuple[str, list[object]]] = []
    with celery_app().connection_for_read() as conn, conn.SimpleQueue(queue_name, no_ack=True) as q:
        while True:
            try:
                msg = q.get(block=False)
            except q.Empty:
                return out
            out.append((msg.headers["task"], list(msg.decode()[0])))


def test_the_resume_task_sends_the_stage_the_job_paused_in(home: Path) -> None:
    from models.jobs import resume
    from worker.stages.all import PIPELINE

    job_id = make_job("tiny", status="paused", stage="score")
    _sent("gpu")
    assert tasks.resume(job_id) == "skipped"  # still paused: nothing to send
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        resume(s, job)
    assert tasks.resume(job_id) == "sent"
    assert _sent("gpu") == [(PIPELINE["score"].task, [job_id])]
