"""End to end: a job trained in two CPU processes (``TUNEGATE_TRAIN_PROCESSES=2``) by a real Celery worker;
the worker is SIGKILLed mid-training, its helper process leaves, and a new worker resumes the job from its
checkpoint in two processes again."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.e2e.harness import chat_rows, e2e_stack, finish, upload, wait_for
from tests.e2e.test_e2e import assert_reached_the_gate

EPOCHS = 4


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):  # the process ended while listed
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_killed_worker_s_helpers_leave_and_the_job_resumes_in_two_processes(tmp_path: Path) -> None:
    with e2e_stack("embedded", tmp_path, train_processes="2", device="cpu") as st:
        first = st.start_worker()
        sdk = st.sdk("ranks-org")
        job = sdk.fine_tuning.jobs.create(
            model="tiny",
            training_file=upload(sdk, chat_rows(12)),
            hyperparameters={"n_epochs": EPOCHS, "batch_size": 2},
        )
        wait_for(sdk, job.id, lambda j: bool(list(sdk.fine_tuning.jobs.checkpoints.list(j.id))), 150, st)
        helpers = _children(first.pid)
        st.kill(first)
        train_dir = st.home / "jobs" / job.id / "train"
        if (train_dir / "result.json").exists():
            pytest.fail("training finished before the kill: nothing was tested")
        assert helpers, "the worker trained without helper processes"
        deadline = time.monotonic() + 60
        while any(_alive(p) for p in helpers):  # a gradient sum without rank 0 fails; the helper exits
            assert time.monotonic() < deadline, f"helper processes {helpers} outlived their worker"
            time.sleep(0.5)
        st.start_worker("rescuer")
        done = finish(sdk, job.id, st, timeout_s=240)
        assert_reached_the_gate(done)
        result = json.loads((train_dir / "result.json").read_text())
        assert result["resumed_from_epoch"] >= 1 and result["epochs"] == EPOCHS
        logs = [p.read_text(errors="replace") for p in sorted(st.home.glob("worker-*.log"))]
        assert len(logs) == 2 and all("training in 2 one-thread processes" in log for log in logs)
        assert not (train_dir / ".ranks").exists()
