"""End-to-end harness: a real uvicorn API, real Celery worker subprocesses, the official openai SDK.

Two modes, chosen by settings only: *embedded* (SQLite database + kombu's SQLAlchemy broker on SQLite, both in
a fresh TUNEGATE_HOME) and *distributed* (a fresh PostgreSQL schema in database ``test`` + Redis db 11 on
127.0.0.1). The tiny model is registered as ``tiny``; its model cache is shared by the whole test process so
per-model caches (scoring reference, base-model evaluation) are computed once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest

from cli.stack import worker_command
from tests.api.server import pg_schema_url, run_server
from tests.worker.jobfactory import shared_tiny
from tunegate.queue import QUEUES

REPO = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/11"
TERMINAL = ("succeeded", "failed", "cancelled")
EVAL_PROMPTS = 12  # the first prompts of the project's harmful evaluation set


def overrides(home: Path) -> dict[str, Any]:
    """Small but real stage settings for a 2-layer model: the cheapest scorer, a short harmful prompt file
    (the provider's ``prompts_file`` knob), short generations, no borderline set."""
    src = REPO / "tunegate" / "data" / "eval" / "harmful.jsonl"
    prompts = home / "eval-prompts.jsonl"
    prompts.parent.mkdir(parents=True, exist_ok=True)
    prompts.write_text("\n".join(src.read_text().splitlines()[:EVAL_PROMPTS]) + "\n")
    return {
        "score": {"scorers": ["representation"], "batch_size": 16},
        "evaluate": {
            "project_set": False,
            "prompts_file": str(prompts),
            "borderline": False,
            "max_new_tokens": 8,
            "n_direction": 8,
            "batch_size": 16,
        },
    }


def _reset() -> None:
    from models.db import reset_engine
    from tunegate.queue import reset_celery
    from tunegate.settings import reset_settings

    reset_settings()
    reset_celery()
    reset_engine()


def flush_redis_db() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL).flushdb()


@dataclass
class Stack:
    mode: str
    home: Path
    base_url: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start_worker(self, name: str = "w", env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A worker subprocess on every queue (short, cpu, gpu) with this process's environment plus ``env``
        (e.g. a home of its own)."""
        log = (self.home / f"worker-{name}-{len(self.workers)}.log").open("ab")
        proc = subprocess.Popen(
            worker_command(",".join(QUEUES), name=f"{name}{len(self.workers)}", log_level="INFO"),
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env} if env else None,
        )
        self.workers.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop_all(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGQUIT)  # cold shutdown: no need to finish a test's task
        for p in self.workers:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)

    def sdk(self, org: str, policy: dict[str, Any] | None = None) -> openai.OpenAI:
        from models.db import session_scope
        from models.keys import create_key
        from models.tables import Organization

        with session_scope() as s:
            key = create_key(s, org)
            row = s.get(Organization, key.org_id)
            assert row is not None
            row.policy = dict(policy or {})
        return openai.OpenAI(
            base_url=f"{self.base_url}/v1", api_key=key.key, _strict_response_validation=True, max_retries=5
        )

    def worker_logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:] for p in sorted(self.home.glob("worker-*.log"))
        )


@contextmanager
def e2e_stack(mode: str, home: Path, **env: str) -> Iterator[Stack]:
    model, cache = shared_tiny()
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        variables = {
            "HOME": str(home),
            "MODELS": json.dumps({"tiny": str(model)}),
            "MODEL_CACHE_DIR": str(cache),
            "STAGE_OVERRIDES": json.dumps(overrides(home)),
            "HEARTBEAT_S": "1",
            "STALE_AFTER_S": "6",
            "REAP_INTERVAL_S": "1",
            "EVENT_INTERVAL_S": "0.5",
            "RETRY_BACKOFF_S": "1",
            "MIN_EXAMPLES": "10",
            # The provider's delta for this stack: 12 paired prompts bound an increase no tighter than about
            # 18% even when nothing changed (docs/safety.md); the random tiny model's blocked job is blocked
            # by its flagged, unmitigated data.
            "GATE_DELTA": "0.6",
            "MAX_EXAMPLE_TOKENS": "512",
            "TORCH_THREADS": "1",
            "LOG_LEVEL": "INFO",
            **env,
        }
        for k, v in variables.items():
            mp.setenv(f"TUNEGATE_{k.upper()}", v)
        if mode == "distributed":
            mp.setenv("TUNEGATE_DATABASE_URL", stack.enter_context(pg_schema_url()))
            mp.setenv("TUNEGATE_BROKER_URL", REDIS_URL)
            flush_redis_db()
        else:
            mp.delenv("TUNEGATE_DATABASE_URL", raising=False)
            mp.delenv("TUNEGATE_BROKER_URL", raising=False)
        _reset()
        stack.callback(_reset)
        import migrations

        migrations.upgrade()
        base_url = stack.enter_context(run_server())
        st = Stack(mode=mode, home=home, base_url=base_url)
        stack.callback(st.stop_all)
        yield st


def chat_rows(n: int, *, offset: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i + 1}?"},
                {"role": "assistant", "content": f"{i} + {i + 1} = {2 * i + 1}. #### {2 * i + 1}"},
            ]
        }
        for i in range(offset, offset + n)
    ]


def upload(sdk: openai.OpenAI, rows: list[dict[str, Any]]) -> str:
    data = "".join(json.dumps(r) + "\n" for r in rows).encode()
    f = sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")
    f = sdk.files.wait_for_processing(f.id, poll_interval=0.2, max_wait_seconds=60)
    assert f.status == "processed", f.status_details
    return f.id


def wait_for(sdk: openai.OpenAI, job_id: str, cond: Any, timeout_s: float, stack: Stack) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if cond(job):
            return job
        time.sleep(0.3)
    raise AssertionError(
        f"{job_id} did not reach the expected state in {timeout_s}s: {job.status} {job.model_extra}"
        f"\n--- worker logs ---\n{stack.worker_logs()}"
    )


def finish(sdk: openai.OpenAI, job_id: str, stack: Stack, timeout_s: float = 180) -> Any:
    return wait_for(sdk, job_id, lambda j: j.status in TERMINAL, timeout_s, stack)


def all_events(sdk: openai.OpenAI, job_id: str) -> list[Any]:
    """Oldest first."""
    return list(reversed(list(sdk.fine_tuning.jobs.list_events(job_id, limit=100))))


def event_seqs(job_id: str) -> list[int]:
    from sqlalchemy import select

    from models.db import session_scope
    from models.tables import JobEvent

    with session_scope() as s:
        return list(s.scalars(select(JobEvent.seq).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
