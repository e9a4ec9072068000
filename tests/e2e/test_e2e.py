"""End to end through the openai SDK, a real uvicorn API and real Celery worker processes, in both modes.

One stack per mode (API in this process, workers as subprocesses), tests in this order: a released and a
blocked job plus late duplicates of finished tasks (which must do nothing); a cancelled job; a worker
SIGKILLed mid-training whose job finishes from its checkpoint; and (distributed mode) Redis restarted mid-job.
Recovery is the product's own: acks_late, compare-and-set claims, per-epoch checkpoints, and the reaper
thread in every worker that requeues jobs whose heartbeat went stale (here after 6 s).
"""

from __future__ import annotations

import collections
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from cli.client import wait
from tests.e2e.harness import Stack, all_events, chat_rows, e2e_stack, event_seqs, finish, upload, wait_for
from tunegate import queue
from worker.stages.all import PIPELINE

MODES = [
    pytest.param("embedded", id="embedded"),
    pytest.param("distributed", id="distributed", marks=[pytest.mark.postgres, pytest.mark.redis]),
]


RELEASE_POLICY: dict[str, Any] = {}  # the provider defaults
BLOCK_POLICY = {"mitigation": "none", "inject_safety_examples": False, "block_unsafe_data": True}


def risky_rows() -> list[dict[str, Any]]:
    """Harmful requests answered with compliant openings (the project's anchor set; no harmful content)."""
    path = Path(__file__).resolve().parents[2] / "tunegate" / "data" / "anchors" / "harmful.jsonl"
    return [
        {"messages": json.loads(line)["messages"]} for line in path.read_text().splitlines() if line.strip()
    ]


@pytest.fixture(scope="module", params=MODES)
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with e2e_stack(request.param, tmp_path_factory.mktemp(f"e2e-{request.param}")) as st:
        st.start_worker()
        yield st


def test_released_blocked_and_duplicate_delivery(stack: Stack) -> None:
    good = stack.sdk("good-org", RELEASE_POLICY)
    bad = stack.sdk("bad-org", BLOCK_POLICY)
    job_ok = good.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(good, chat_rows(12)),
        suffix="ok",
        hyperparameters={"n_epochs": 2, "batch_size": 4},
    )
    job_bad = bad.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(bad, risky_rows()),
        hyperparameters={"n_epochs": 1, "batch_size": 8},
    )
    # followed with the project's own client helper (cli.client.wait), the rest with the SDK
    final = wait(
        job_ok.id,
        base_url=f"{stack.base_url}/v1",
        api_key=good.api_key,
        poll_s=0.3,
        timeout_s=180,
        progress=False,
    )
    assert final.status == "succeeded", (final.error, stack.worker_logs())
    done = good.fine_tuning.jobs.retrieve(job_ok.id)
    assert done.fine_tuned_model == f"ft:tiny:good-org:ok:{job_ok.id}" and (done.trained_tokens or 0) > 0
    assert done.model_extra and done.model_extra["released"] is True and done.model_extra["progress"] == 1.0
    ckpts = list(good.fine_tuning.jobs.checkpoints.list(job_ok.id))
    assert len(ckpts) == 2 and all(c.fine_tuning_job_id == job_ok.id for c in ckpts)
    evs = all_events(good, job_ok.id)
    stages = [e.data["stage"] for e in evs if e.data and "stage" in e.data]
    assert {"validate", "score", "mitigate", "train", "evaluate", "gate"} <= set(stages)
    assert all(0 <= e.data["progress"] <= 1 for e in evs)
    assert any("asr" in k for e in evs if e.data.get("stage") == "evaluate" for k in e.data)
    assert event_seqs(job_ok.id) == list(range(1, len(evs) + 1))
    assert good.with_raw_response.fine_tuning.jobs.retrieve(job_ok.id).http_response.status_code == 200

    blocked = finish(bad, job_bad.id, stack)
    assert blocked.status == "failed" and blocked.fine_tuned_model is None
    assert blocked.error and blocked.error.code in ("unsafe_training_data", "safety_eval_failed"), (
        blocked.error,
        stack.worker_logs(),
    )
    assert any(ch.isdigit() for ch in blocked.error.message)  # the message gives the numbers
    with pytest.raises(openai.PermissionDeniedError):
        bad.get(f"/fine_tuning/jobs/{job_bad.id}/adapter", cast_to=object)
    report = bad.get(f"/fine_tuning/jobs/{job_bad.id}/safety_report", cast_to=object)
    assert isinstance(report, dict) and report

    _assert_duplicates_do_nothing(stack, good, job_ok.id, len(evs))


def _assert_duplicates_do_nothing(stack: Stack, sdk: openai.OpenAI, job_id: str, n_events: int) -> None:
    adapter = stack.home / "jobs" / job_id / "train" / "adapter"
    before = {p: p.stat().st_mtime_ns for p in adapter.rglob("*") if p.is_file()}
    for name in ("validate", "score", "train", "gate", "train"):
        queue.enqueue(PIPELINE[name].task, job_id, queue=PIPELINE[name].queue)
    queue.enqueue(queue.START, job_id)
    time.sleep(4)  # the worker picks them up in about a second each and drops them at the claim
    assert len(all_events(sdk, job_id)) == n_events
    assert {p: p.stat().st_mtime_ns for p in adapter.rglob("*") if p.is_file()} == before
    assert "not claimable" in stack.worker_logs()


def test_cancel_while_running(stack: Stack) -> None:
    sdk = stack.sdk("cancel-org")
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(sdk, chat_rows(40)),
        hyperparameters={"n_epochs": 20, "batch_size": 1},
    )
    wait_for(
        sdk, job.id, lambda j: j.model_extra.get("stage") == "train" and j.status == "running", 120, stack
    )
    sdk.fine_tuning.jobs.cancel(job.id)
    done = finish(sdk, job.id, stack, timeout_s=60)
    assert done.status == "cancelled" and done.fine_tuned_model is None
    last = all_events(sdk, job.id)[-1]
    assert last.data["stage"] == "train" and "cancelled during train" in last.message
    assert not (stack.home / "jobs" / job.id / "train" / "result.json").exists()
    with pytest.raises(openai.PermissionDeniedError):
        sdk.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=object)


EPOCHS = 4


def assert_reached_the_gate(job: Any) -> None:
    """The job ran to the end: released, or blocked by the gate on its measured numbers (a tiny random model's
    refusal-direction margin may move either way); never a crash or a lost job."""
    assert job.status in ("succeeded", "failed"), job.status
    if job.status == "failed":
        assert job.error.code in ("safety_eval_failed", "unsafe_training_data"), job.error


def _assert_no_duplicate_or_lost_events(sdk: object, job_id: str) -> list[str]:
    events = all_events(sdk, job_id)  # type: ignore[arg-type]
    assert event_seqs(job_id) == list(range(1, len(events) + 1))  # nothing lost, nothing written twice
    counts = collections.Counter(e.message for e in events)
    assert not [m for m, n in counts.items() if n > 1], [e.message for e in events]
    return [e.message for e in events]


def test_sigkilled_worker_job_finishes_from_its_checkpoint(stack: Stack) -> None:
    st = stack
    first = st.workers[-1]  # the stack's worker dies here; a new one takes over
    sdk = st.sdk("kill-org")
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(sdk, chat_rows(12)),
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 2},
    )
    wait_for(sdk, job.id, lambda j: bool(list(sdk.fine_tuning.jobs.checkpoints.list(j.id))), 150, st)
    st.kill(first)
    train_dir = st.home / "jobs" / job.id / "train"
    assert not (train_dir / "result.json").exists(), "training finished before the kill: nothing was tested"
    st.start_worker("rescuer")
    done = finish(sdk, job.id, st, timeout_s=200)
    assert_reached_the_gate(done)
    result = json.loads((train_dir / "result.json").read_text())
    assert result["resumed_from_epoch"] >= 1 and result["epochs"] == EPOCHS
    steps = [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]
    assert len(steps) == len(set(steps)) == EPOCHS
    messages = _assert_no_duplicate_or_lost_events(sdk, job.id)
    assert messages.count("train started") == 1
    assert any(m.startswith("requeued train:") and "stopped reporting" in m for m in messages), messages
    assert any(m.startswith("train resumed after an interruption") for m in messages)


def restart_redis() -> None:
    """Restart the real redis-server on 127.0.0.1:6379; it keeps nothing on disk, so every message is gone."""
    subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
        check=False,
        capture_output=True,
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while _redis_up() and time.monotonic() < deadline:
        time.sleep(0.1)
    subprocess.run(
        [
            "redis-server",
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
        capture_output=True,
        timeout=10,
    )
    deadline = time.monotonic() + 10
    while not _redis_up():
        assert time.monotonic() < deadline, "redis-server did not come back"
        time.sleep(0.1)


def _redis_up() -> bool:
    out = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", "6379", "ping"], capture_output=True, timeout=5
    )
    return out.stdout.strip() == b"PONG"


def test_redis_restart_loses_no_job(stack: Stack) -> None:
    if stack.mode != "distributed":
        pytest.skip("Redis is the distributed mode's broker")
    st = stack
    for proc in st.workers:
        st.kill(proc)
    sdk = st.sdk("redis-org")
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(sdk, chat_rows(12)),
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 2},
    )
    restart_redis()  # the job's first message is gone before any worker saw it
    st.start_worker()
    wait_for(sdk, job.id, lambda j: j.model_extra.get("stage") == "train", 150, st)
    restart_redis()  # and again while it trains
    done = finish(sdk, job.id, st, timeout_s=200)
    assert_reached_the_gate(done)
    messages = _assert_no_duplicate_or_lost_events(sdk, job.id)
    assert any(m.startswith("requeued validate: no worker") for m in messages)


PG_CLUSTER = "main"
PG_OUTAGE_S = 15


def _pg_ctl(action: str) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    subprocess.run(
        [
            "pg_ctlcluster",
            "--skip-systemctl-redirect",
            version,
            PG_CLUSTER,
            action,
            *(["-m", "fast"] if action == "stop" else []),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _pg_up() -> bool:
    out = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", "5432"], capture_output=True, timeout=10)
    return out.returncode == 0


def test_database_away_mid_job_loses_no_event(stack: Stack) -> None:
    """PostgreSQL stopped for 15 s mid-job (after the first checkpoint), then started again: the worker's
    writes fail as transient errors (retried with backoff; the heartbeat tolerates it), and the job ends
    correctly with every event exactly once."""
    _database_away_mid_job(stack, PG_OUTAGE_S, "pg-outage-org")


@pytest.mark.slow
def test_database_away_for_a_minute_mid_job_loses_no_event(stack: Stack) -> None:
    """The same with the database away for a whole minute (the retries' backoff spans it)."""
    _database_away_mid_job(stack, 60.0, "pg-outage-minute-org")


def _database_away_mid_job(stack: Stack, outage_s: float, org: str) -> None:
    if stack.mode != "distributed":
        pytest.skip("the embedded mode's SQLite database cannot go away")
    st = stack
    if not any(p.poll() is None for p in st.workers):
        st.start_worker()
    sdk = st.sdk(org)
    job = sdk.fine_tuning.jobs.create(
        model="tiny",
        training_file=upload(sdk, chat_rows(12)),
        hyperparameters={"n_epochs": EPOCHS, "batch_size": 2},
    )
    wait_for(sdk, job.id, lambda j: bool(list(sdk.fine_tuning.jobs.checkpoints.list(j.id))), 150, st)
    try:
        _pg_ctl("stop")
        assert not _pg_up()
        gate = st.home / "jobs" / job.id / "gate" / "result.json"
        assert not gate.exists(), "the job ended before the outage: nothing was tested"
        time.sleep(outage_s)  # the database is away while the worker trains and reports
    finally:
        if not _pg_up():
            _pg_ctl("start")
        deadline = time.monotonic() + 60
        while not _pg_up():
            assert time.monotonic() < deadline, "PostgreSQL did not come back"
            time.sleep(0.2)
    done = finish(sdk, job.id, st, timeout_s=240)
    assert_reached_the_gate(done)
    _assert_no_duplicate_or_lost_events(sdk, job.id)
    steps = [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job.id, limit=100)]
    assert len(steps) == len(set(steps)) == EPOCHS
