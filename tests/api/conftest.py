"""API test fixtures: a real uvicorn server per database backend, an SDK client per test (fresh org)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.api.server import Server, pg_schema_url, run_server
from tests.utils.reports import small_report_json

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


def _reset() -> None:
    from models.db import reset_engine
    from tunegate.queue import reset_celery
    from tunegate.settings import reset_settings

    reset_settings()
    reset_celery()
    reset_engine()


@pytest.fixture(scope="session", params=BACKENDS)
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    backend: str = request.param
    home = tmp_path_factory.mktemp(f"home-{backend}")
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        mp.setenv("TUNEGATE_HOME", str(home))
        mp.delenv("TUNEGATE_BROKER_URL", raising=False)  # the embedded broker (kombu SQLAlchemy on SQLite)
        mp.setenv("TUNEGATE_MIN_EXAMPLES", "10")
        mp.setenv("TUNEGATE_MAX_UPLOAD_BYTES", str(200_000))
        mp.setenv("TUNEGATE_MAX_UPLOAD_PART_BYTES", str(64 * 1024))
        mp.setenv("TUNEGATE_MAX_EXAMPLE_TOKENS", "512")
        # No worker serves these tests: room for every job, so each is admitted (its start message sent) as
        # soon as it is created or resumed. tests/worker/test_dispatch.py covers the dispatcher's turns.
        mp.setenv("TUNEGATE_WORKER_SLOTS", "100000")
        # the in-process server's INFO line per request would end up in the test output
        mp.setenv("TUNEGATE_LOG_LEVEL", "WARNING")
        if backend == "postgres":
            mp.setenv("TUNEGATE_DATABASE_URL", stack.enter_context(pg_schema_url()))
        else:
            mp.delenv("TUNEGATE_DATABASE_URL", raising=False)
        _reset()
        stack.callback(_reset)
        import migrations

        migrations.upgrade()
        base_url = stack.enter_context(run_server())
        yield Server(base_url=base_url, home=home, backend=backend)


@pytest.fixture(autouse=True)
def _settings_follow_environment() -> None:
    """Other tests may leave settings cached for their own home: re-read the environment."""
    from tunegate.queue import reset_celery
    from tunegate.settings import reset_settings

    reset_settings()
    reset_celery()


def new_key(org_name: str | None = None, **org_fields: Any) -> str:
    from models.db import session_scope
    from models.keys import create_key
    from models.tables import Organization

    with session_scope() as session:
        new = create_key(session, org_name or f"org-{secrets.token_hex(4)}")
        org = session.get(Organization, new.org_id)
        assert org is not None
        for k, v in org_fields.items():
            setattr(org, k, v)
    return new.key


def sdk(server: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1",
        api_key=key,
        _strict_response_validation=True,
        max_retries=0,
        timeout=30,
    )


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    """An SDK client for a brand-new organization (tests never see each other's objects)."""
    return sdk(server, new_key())


def chat(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}"},
        ],
        **extra,
    }


def jsonl(rows: list[Any], *, sep: str = "\n") -> bytes:
    return (sep.join(json.dumps(r) for r in rows) + sep).encode("utf-8")


def good_file(n: int = 12) -> bytes:
    return jsonl([chat(i) for i in range(n)])


def processed_file(client: openai.OpenAI, content: bytes | None = None) -> str:
    f = client.files.create(file=("train.jsonl", content or good_file()), purpose="fine-tune")
    f = client.files.wait_for_processing(f.id, poll_interval=0.05, max_wait_seconds=30)
    assert f.status == "processed", f.status_details
    return f.id


def release_job(job_id: str, artifacts: Path) -> str:
    """What the gate stage does on a pass: adapter + report on disk, job succeeded and released."""
    from models.db import session_scope
    from models.jobs import JobStatus, fine_tuned_model_name, transition
    from models.tables import Job, Organization

    adapter = artifacts / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (artifacts / "report.json").write_text(json.dumps(small_report_json()))
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        org = session.get(Organization, job.org_id)
        assert org is not None
        for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED):
            transition(session, job, status, message=status.value, data={"stage": "gate"})
        job.released, job.adapter_path, job.report_path = True, str(adapter), str(artifacts)
        job.fine_tuned_model = fine_tuned_model_name(job.model, org.name, job.suffix, job.id)
        job.trained_tokens = 1234
        return job.fine_tuned_model


@pytest.fixture
def console_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed console secret: required in distributed mode (the postgres backend), harmless in embedded."""
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_CONSOLE_SECRET", "test-console-secret-" + server.backend)
    reset_settings()


def admin_key(name: str = "Dana Moderator") -> str:
    """A provider-staff key (the console's login) held by ``name``."""
    from models.db import session_scope
    from models.keys import create_admin_key

    with session_scope() as s:
        return create_admin_key(s, name).key
