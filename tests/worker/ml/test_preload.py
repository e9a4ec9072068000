"""transformers' lazy names, imported before a threads pool starts: threads importing them at once then never
race (without ``preload``, three threads doing the first import at once fail with ImportError)."""

from __future__ import annotations

import subprocess
import sys

from worker.celery_app import _preload  # noqa: F401  (connected to worker_init)

RACE = """
import threading
{preload}
errors = []
def first_use():
    try:
        from transformers import AutoConfig, AutoTokenizer  # noqa: F401
    except ImportError as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=first_use) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
print(len(errors))
"""


def _errors(preloaded: bool) -> int:
    """How many of four threads failed their first import of transformers' names (in a fresh process)."""
    pre = "from worker.ml.preload import preload; preload()" if preloaded else ""
    code = RACE.format(preload=pre)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return int(out.stdout.strip().splitlines()[-1])


def test_threads_importing_transformers_after_preload_never_race() -> None:
    assert [_errors(preloaded=True) for _ in range(3)] == [0, 0, 0]


def test_the_worker_preloads_at_worker_init() -> None:
    from celery.signals import worker_init

    assert any("_preload" in repr(r[1]) for r in worker_init.receivers)
