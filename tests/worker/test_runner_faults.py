"""Faults a provider sees while a stage runs, injected into real stage runs on the tiny model."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select

from models.db import session_scope
from models.tables import Checkpoint, Job, JobEvent
from tests.worker.jobfactory import chat_rows, make_job, use_tiny
from tunegate.errors import StorageFull
from tunegate.settings import get_settings
from worker import runner
from worker.job_view import job_dir

TEST_OVERRIDES = {"score": {"scorers": ["representation"], "batch_size": 16}}


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_tiny(monkeypatch, event_interval_s="0", stage_overrides=json.dumps(TEST_OVERRIDES))
    return migrated_home


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


class DiskFull:
    """``os.write`` that writes half of the first matching write, then raises ENOSPC (as a full disk does)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path_part: str) -> None:
        self.real = os.write
        self.path_part = path_part
        self.armed = True
        self.hits = 0
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data: bytes | memoryview) -> int:
        if self.armed and self.path_part in _fd_path(fd):
            self.hits += 1
            self.real(fd, bytes(data)[: max(1, len(data) // 2)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self.real(fd, data)


def _stray_temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith((".tmp", ".old")) or ".tmp" in p.name]


@pytest.mark.parametrize("target", [".epoch-2.tmp", "result.json"])
def test_disk_full_while_training_writes_is_retried_and_damages_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, target: str
) -> None:
    """ENOSPC from the real write call, partway through the epoch-2 checkpoint or the stage's result.json:
    the stage raises the retryable StorageFull, the claim is released, no half-written artifact is visible,
    epoch 1's checkpoint is intact; the retry resumes from it and the job goes on, no event duplicated."""
    job_id = make_job("tiny", chat_rows(12), hyperparameters={"n_epochs": 2, "batch_size": 4})
    for stage in ("validate", "score", "mitigate"):
        assert runner.execute(stage, job_id).status == "done", stage
    out = job_dir(get_settings(), job_id) / "train"
    disk = DiskFull(monkeypatch, target)
    with pytest.raises(StorageFull) as info:
        runner.execute("train", job_id)
    assert disk.hits == 1 and info.value.code == "storage_full"
    assert str(get_settings().home_dir) not in info.value.message
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.stage, job.claimed_by) == ("running", "train", None)
    assert not (out / "result.json").exists() and _stray_temp_files(out) == []
    epoch1 = out / "checkpoints" / "epoch-1"
    assert (epoch1 / "trainer_state.pt").is_file() and (epoch1 / "adapter").is_dir()
    if target == ".epoch-2.tmp":
        assert not (out / "checkpoints" / "epoch-2").exists()

    disk.armed = False  # space freed: the retry (Celery's, here called directly) finishes the stage
    assert runner.execute("train", job_id) == runner.Outcome("done", "evaluate")
    result = json.loads((out / "result.json").read_text())
    assert result["resumed_from_epoch"] == (1 if target == ".epoch-2.tmp" else 2)
    assert _stray_temp_files(out) == []
    with session_scope() as s:
        steps = [c.step_number for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))]
        events = list(s.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    assert steps == sorted(set(steps)) and len(steps) == 2
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    keys = [e.dedupe_key for e in events if e.dedupe_key]
    assert len(keys) == len(set(keys))


def test_disk_full_past_the_retries_fails_the_job_with_storage_full(home: Path) -> None:
    job_id = make_job("tiny", chat_rows(12), stage="validate")
    runner.give_up("validate", job_id, StorageFull("the server ran out of disk space"))
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert job.error["code"] == "storage_full"


def test_database_away_after_a_checkpoint_is_saved_loses_no_checkpoint_row(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The epoch-2 checkpoint is on disk but recording it fails (the database went away): the retry resumes
    from it and records it, so every epoch has its checkpoint row and event exactly once."""
    from sqlalchemy.exc import OperationalError

    from tunegate.errors import TransientError
    from worker.events import StageReporter

    job_id = make_job("tiny", chat_rows(12), hyperparameters={"n_epochs": 3, "batch_size": 4})
    for stage in ("validate", "score", "mitigate"):
        assert runner.execute(stage, job_id).status == "done", stage
    real = StageReporter.checkpoint
    failed: list[int] = []

    def away_once(self: StageReporter, info: dict[str, object]) -> None:
        if info["epoch"] == 2 and not failed:
            failed.append(2)
            raise OperationalError(
                "INSERT INTO checkpoints ...", None, Exception("server closed the connection")
            )
        real(self, info)

    monkeypatch.setattr(StageReporter, "checkpoint", away_once)
    with pytest.raises(TransientError):
        runner.execute("train", job_id)
    assert ((job_dir(get_settings(), job_id) / "train") / "checkpoints" / "epoch-2").is_dir()
    assert runner.execute("train", job_id) == runner.Outcome("done", "evaluate")
    with session_scope() as s:
        steps = [c.step_number for c in s.scalars(select(Checkpoint).where(Checkpoint.job_id == job_id))]
        events = [e.message for e in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id))]
    assert len(steps) == len(set(steps)) == 3
    saved = [m for m in events if m.startswith("checkpoint saved")]
    assert len(saved) == len(set(saved)) == 3


def test_a_stage_past_its_time_limit_fails_the_job_with_stage_time_limit(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gpu queue's soft limit (hard limit minus the grace) passes while training runs: the stage stops at
    its next step and the job fails with ``stage_time_limit``; Celery's limits come from the same settings."""
    from tunegate import queue
    from tunegate.settings import reset_settings
    from worker.stages.all import PIPELINE

    job_id = make_job("tiny", chat_rows(12), hyperparameters={"n_epochs": 50, "batch_size": 1})
    for stage in ("validate", "score", "mitigate"):
        assert runner.execute(stage, job_id).status == "done", stage
    monkeypatch.setenv("TUNEGATE_GPU_STAGE_TIME_LIMIT_S", "2")
    monkeypatch.setenv("TUNEGATE_STAGE_TIME_GRACE_S", "1")
    reset_settings()
    specs = {s.name: s for s in PIPELINE.specs}
    limits = queue.time_limits(get_settings(), {s.task: s.queue for s in PIPELINE.specs})
    assert limits[specs["train"].task] == {"time_limit": 2, "soft_time_limit": 1}
    assert limits[specs["gate"].task] == {"time_limit": 3600, "soft_time_limit": 3599}
    assert runner.execute("train", job_id) == runner.Outcome("failed")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed" and job.error is not None
        assert job.error["code"] == "stage_time_limit" and "train" in job.error["message"]
