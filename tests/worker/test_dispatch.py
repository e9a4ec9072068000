"""Issue 29 section 7: the dispatcher admits waiting jobs round-robin across organizations, never the same job
twice nor more than the workers' room, gives a job's turn back when the broker refuses its message, and runs
after a job ends (the runner) and on every reaper pass; the reaper resends an admitted job's lost message and
leaves waiting jobs alone."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.dispatch import dispatch, in_flight
from models.jobs import JobStatus, pause, resume, transition
from models.keys import get_or_create_org
from models.tables import Job
from tests.utils.broker import queued_tasks
from tests.utils.databases import KINDS, database
from tests.worker.jobfactory import chat_rows, store_file
from tunegate import queue
from tunegate.settings import reset_settings
from worker import reaper, runner
from worker.ml.stage_io import StageIO
from worker.stages.base import StageResult, finish
from worker.stages.spec import Applied, Pipeline, StageContext, StageSpec


@pytest.fixture
def home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TUNEGATE_WORKER_SLOTS", "1")
    monkeypatch.setenv("TUNEGATE_JOBS_PER_WORKER_SLOT", "1")
    reset_settings()
    return migrated_home


@pytest.fixture(params=KINDS)
def any_db(request: pytest.FixtureRequest, home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``home`` on SQLite, or with its database on a fresh PostgreSQL schema."""
    with database(request.param, monkeypatch) as kind:
        yield kind


def _jobs(org: str, n: int, **fields: Any) -> list[str]:
    """``n`` new jobs of ``org``, oldest first, as the API stores them (waiting: not admitted)."""
    with session_scope() as s:
        org_id = get_or_create_org(s, org).id
    file_id = store_file(org_id, chat_rows(12))
    ids = []
    with session_scope() as s:
        for _ in range(n):
            job = Job(
                org_id=org_id,
                model="tiny",
                training_file=file_id,
                status="validating_files",
                hyperparameters={},
                method={},
                safety={},
                **fields,
            )
            s.add(job)
            s.flush()
            ids.append(job.id)
    return ids


def _finish(job_id: str) -> None:
    """The job runs to the end, as its worker would move it."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED):
            transition(s, job, status, message=status.value)


def _admitted() -> set[str]:
    with session_scope() as s:
        return set(s.scalars(select(Job.id).where(in_flight())))


def _starts() -> list[str]:
    return [args[0] for name, args in queued_tasks(("short",)) if name == queue.START]


def test_orgs_with_one_job_go_before_the_second_job_of_an_org_with_fifty(home: Path) -> None:
    a = _jobs("org-a", 50)
    (b,) = _jobs("org-b", 1)
    (c,) = _jobs("org-c", 1)
    order = []
    for _ in range(4):
        sent = dispatch()
        assert len(sent) == 1, sent  # one worker slot: one job at a time
        order += sent
        _finish(sent[0])
    assert order == [a[0], b, c, a[1]]
    assert _starts() == order  # each admitted job's start message, on the short queue


def test_turns_with_room_for_three(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_WORKER_SLOTS", "3")
    reset_settings()
    a = _jobs("org-a", 5)
    b = _jobs("org-b", 2)
    c = _jobs("org-c", 1)
    assert dispatch() == [a[0], b[0], c[0]]
    assert dispatch() == []  # no room until one ends
    _finish(c[0])
    assert dispatch() == [a[1]]  # A and B have one running each; A's last turn is the oldest
    _finish(b[0])
    assert dispatch() == [b[1]]
    assert _admitted() == {a[0], a[1], b[1]}


def test_two_jobs_per_slot_and_a_busy_org_goes_last(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_JOBS_PER_WORKER_SLOT", "2")
    reset_settings()
    a = _jobs("org-a", 4)
    assert dispatch() == a[:2]  # alone: A takes the room
    b = _jobs("org-b", 1)
    _finish(a[0])
    assert dispatch() == b  # fewer running than A
    _finish(a[1])
    assert dispatch() == [a[2]]


def test_concurrent_dispatchers_never_admit_a_job_twice_nor_past_the_room(
    any_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_WORKER_SLOTS", "5")
    reset_settings()
    for org in ("org-a", "org-b", "org-c", "org-d"):
        _jobs(org, 5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        sent = [job for batch in pool.map(lambda _: dispatch(), range(8)) for job in batch]
    assert len(sent) == len(set(sent)) == 5, sent
    assert _admitted() == set(sent)
    assert sorted(_starts()) == sorted(sent)  # one message each


def test_a_refused_message_gives_the_turn_back(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (job,) = _jobs("org-a", 1)
    monkeypatch.setenv("TUNEGATE_BROKER_URL", "redis://127.0.0.1:9/0")  # nothing listens on port 9
    reset_settings()
    queue.reset_celery()
    assert dispatch() == []
    assert _admitted() == set()  # waiting again, not admitted without a message
    monkeypatch.delenv("TUNEGATE_BROKER_URL")
    reset_settings()
    queue.reset_celery()
    assert dispatch() == [job]
    assert _starts() == [job]


def test_a_paused_job_gives_its_turn_back_and_resumes_in_a_later_turn(home: Path) -> None:
    a = _jobs("org-a", 2)
    (b,) = _jobs("org-b", 1)
    assert dispatch() == [a[0]]
    with session_scope() as s:
        job = s.get(Job, a[0])
        assert job is not None
        transition(s, job, JobStatus.QUEUED, message="validated", data={"stage": "score"})
        pause(s, job)  # queued and unclaimed: pauses at once
        assert job.status == "paused" and job.admitted_at is None
    assert dispatch() == [b]  # A just had its turn
    with session_scope() as s:
        job = s.get(Job, a[0])
        assert job is not None
        resume(s, job)
    _finish(b)
    assert dispatch() == [a[0]]  # the resumed job is A's oldest waiting one
    assert [name for name, args in queued_tasks(("short",))] == [queue.START, queue.START, queue.RESUME]


def test_the_reaper_resends_a_lost_message_and_leaves_waiting_jobs_alone(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_STALE_AFTER_S", "60")
    reset_settings()
    first, second = _jobs("org-a", 2)
    old = utcnow() - timedelta(hours=2)
    with session_scope() as s:  # both created long ago
        s.execute(update(Job).values(created_at=old))
    assert dispatch() == [first]
    queued_tasks()  # the start message is lost
    assert reaper.reap() == []  # admitted just now: its clock started at admission
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == first).values(heartbeat_at=old))
    assert reaper.reap() == [first]  # the waiting second job is not stale: it was sent nothing
    assert queued_tasks() == [("tunegate.job.validate", [first])]


# --- the runner's hook: a job that ends or pauses hands its turn on --------------------------------------


@dataclass(frozen=True)
class _NoConfig:
    pass


@dataclass
class _Done(StageResult):
    ok: bool = True


def _build(ctx: StageContext, io: StageIO) -> tuple[_NoConfig, StageIO]:
    return _NoConfig(), io


def _run(cfg: _NoConfig, io: StageIO) -> _Done:
    return finish(io.out_dir, cfg, _Done())


def _to(status: JobStatus) -> Any:
    def apply(session: Session, job: Job, res: _Done) -> Applied:
        return Applied(f"to {status.value}", status=status)

    return apply


PIPE = Pipeline(
    [
        StageSpec("check", "short", 0.5, _Done, _build, _run, _to(JobStatus.QUEUED)),
        StageSpec("work", "gpu", 0.5, _Done, _build, _run, _to(JobStatus.SUCCEEDED)),
    ]
)


def test_a_job_that_ends_hands_its_turn_to_the_next_org(home: Path) -> None:
    a = _jobs("org-a", 2)
    (b,) = _jobs("org-b", 1)
    assert dispatch() == [a[0]]
    queued_tasks()
    assert runner.execute("check", a[0], pipeline=PIPE) == runner.Outcome("done", "work")
    assert _admitted() == {a[0]}  # handed on to its next stage: still its turn
    assert runner.execute("work", a[0], pipeline=PIPE) == runner.Outcome("done")
    assert _admitted() == {b}  # it ended: B's turn came at once, no reaper pass needed
    assert queued_tasks() == [(queue.START, [b]), ("tunegate.job.work", [a[0]])]


def test_a_cancelled_job_hands_its_turn_on(home: Path) -> None:
    (a,) = _jobs("org-a", 1)
    (b,) = _jobs("org-b", 1)
    assert dispatch() == [a]
    with session_scope() as s:
        s.execute(update(Job).where(Job.id == a).values(cancel_requested=True))
    assert runner.execute("validate", a).status == "cancelled"
    assert _admitted() == {b}
