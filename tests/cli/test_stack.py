"""``tunegate serve``'s stack (``cli.stack.embedded_stack``): the API, a heavy worker on ``gpu,cpu`` and a
light worker of its own on ``short`` (issue 29 section 7: short tasks must not wait behind training)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.stack import embedded_stack
from tests.api.server import free_port, wait_for
from tunegate import queue
from tunegate.settings import get_settings


def _lines(path: Path) -> list[dict[str, object]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def _done(path: Path, task_id: str) -> bool:
    return any(
        task_id in str(line.get("event")) and "succeeded" in str(line.get("event")) for line in _lines(path)
    )


@pytest.mark.slow  # a minute of two real workers; tests/cli/test_service.py also runs serve
def test_serve_runs_a_heavy_and_a_short_worker(tunegate_home: Path) -> None:
    logs = tunegate_home / "logs"
    with embedded_stack(get_settings(), host="127.0.0.1", port=free_port(), log_dir=logs) as stack:
        assert len(stack.workers) == 1 and stack.short_worker is not None
        heavy, short = stack.workers[0].args, stack.short_worker.args  # the commands they were started with
        assert isinstance(heavy, list) and isinstance(short, list)
        assert heavy[heavy.index("-Q") + 1] == "gpu,cpu"
        assert short[short.index("-Q") + 1] == "short" and short[short.index("--pool") + 1] == "threads"
        assert all(p.poll() is None for p in stack.processes)
        task_id = queue.enqueue(queue.REAP)  # a short task
        wait_for(lambda: _done(logs / "worker-short.log", task_id), "the short worker to run it", 90)
        assert not any(task_id in str(line.get("event")) for line in _lines(logs / "worker.log"))
