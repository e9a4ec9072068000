"""Issue 14: a Celery worker started as ``tunegate worker`` (prefork pool) logs JSON lines only, from its
main process and its pool children alike, and prints no banner; it keeps its alive file (the container
healthcheck) fresh while it runs. (On a stop signal Celery's own handler
prints one plain "worker: Warm shutdown" line to stdout; the test reads the output before stopping it.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.api.server import REPO, wait_for
from tunegate import queue


def test_worker_output_is_json_lines_from_parent_and_pool_children(migrated_home: Path) -> None:
    out = migrated_home / "worker.log"
    alive = migrated_home / "alive"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TUNEGATE_WORKER_ALIVE_FILE": str(alive),
        "TUNEGATE_LOG_LEVEL": "INFO",
    }
    cmd = [sys.executable, "-c", "from cli import main; main()", "worker", "--queues", "short"]
    with out.open("ab") as sink:
        proc = subprocess.Popen(
            [*cmd, "--pool", "prefork", "--concurrency", "1"], cwd=REPO, env=env, stdout=sink, stderr=sink
        )
        try:
            wait_for(lambda: "ready" in out.read_text() or proc.poll() is not None, "the worker to start")
            assert proc.poll() is None, out.read_text()
            wait_for(alive.is_file, "the alive file")
            task_id = queue.enqueue(queue.REAP)  # a real task, run in a pool child
            wait_for(lambda: "succeeded" in out.read_text(), "the task to finish")
            text = out.read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert not alive.exists()  # a stopped worker is not alive
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert all(isinstance(line, dict) and line["level"] and line["logger"] for line in lines)
    done = [line for line in lines if task_id in line["event"] and "succeeded" in line["event"]]
    assert done and done[0]["logger"].startswith("celery")


def test_a_worker_given_overrides_of_an_unknown_stage_does_not_start(tunegate_home: Path) -> None:
    """A misspelt stage in TUNEGATE_STAGE_OVERRIDES stops ``tunegate worker`` at once with one line naming
    it, instead of a worker that ignores it (or fails every job)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "TUNEGATE_STAGE_OVERRIDES": json.dumps({"trian": {"n_epochs": 1}}),
    }
    cmd = [sys.executable, "-c", "from cli import main; main()", "worker", "--queues", "short"]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "error: TUNEGATE_STAGE_OVERRIDES names unknown stage(s) 'trian'; the stages are: validate, " in (
        res.stderr
    )
