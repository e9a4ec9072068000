"""A job waiting on a queue that no worker serves says so (issue 28, CLI): the job's ``waiting`` in the API,
``tunegate follow``'s output and the console's job page, from the workers' presence rows
(``models/presence.py``)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from models import presence
from tests.api.conftest import admin_key, console_env, new_key, processed_file, sdk, server  # noqa: F401
from tests.api.server import Server, wait_for
from tunegate.settings import reset_settings

MODEL = "smollm2-135m"


@pytest.fixture
def one_second_beats(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Heartbeats of one second: a job says it waits after two (the grace); a worker's row stays fresh
    for three."""
    monkeypatch.setenv("TUNEGATE_HEARTBEAT_S", "1")
    reset_settings()
    presence.reset_cache()
    yield
    monkeypatch.undo()
    reset_settings()
    presence.reset_cache()


def waiting_of(client: openai.OpenAI, job_id: str) -> str | None:
    extra = client.fine_tuning.jobs.retrieve(job_id).model_extra or {}
    value = extra.get("waiting")
    return value if isinstance(value, str) else None


def console_page(base_url: str, job_id: str) -> str:
    """The console's job page as a moderator sees it (logged in with a provider-staff key)."""
    with httpx.Client(base_url=base_url, follow_redirects=False, timeout=30) as browser:
        form = browser.get("/console/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf, form.text
        assert (
            browser.post("/console/login", data={"key": admin_key(), "csrf": csrf.group(1)}).status_code
            == 303
        )
        page = browser.get(f"/console/jobs/{job_id}")
        assert page.status_code == 200, page.text
        return page.text


def follow_says(base_url: str, key: str, job_id: str, line: str, out: Path) -> None:
    """``tunegate follow JOB`` prints ``line`` while the job waits (then it is stopped: the job would never
    end)."""
    with out.open("w") as sink:
        follower = subprocess.Popen(
            [sys.executable, "-c", "import cli; cli.main()", "follow", job_id, "--api-key", key],
            env={**_env(), "TUNEGATE_BASE_URL": f"{base_url}/v1"},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(
                lambda: line in out.read_text() or follower.poll() is not None, f"follow to say {line}", 90
            )
            assert line in out.read_text(), out.read_text()
            assert out.read_text().count(line) == 1  # said once, not at every poll
        finally:
            follower.send_signal(signal.SIGTERM)
            follower.wait(timeout=30)


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("TUNEGATE_API_KEY", "OPENAI_API_KEY")}


def test_a_job_no_worker_serves_says_so_in_the_api_follow_and_the_console(
    server: Server,  # noqa: F811
    console_env: None,  # noqa: F811
    one_second_beats: None,
    tmp_path: Path,
) -> None:
    key = new_key()
    client = sdk(server, key)
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    assert (job.model_extra or {}).get("waiting") is None  # admitted just now: within the grace
    # no worker runs in the API tests: the job's start message sits on the short queue
    wait_for(lambda: waiting_of(client, job.id) is not None, "the job to say it waits", 30)
    assert waiting_of(client, job.id) == "no worker is serving queue short"
    listed = next(j for j in client.fine_tuning.jobs.list() if j.id == job.id)
    assert (listed.model_extra or {}).get("waiting") == "no worker is serving queue short"

    follow_says(
        server.base_url, key, job.id, "waiting: no worker is serving queue short", tmp_path / "follow"
    )
    page = console_page(server.base_url, job.id)
    assert 'id="waiting"' in page and "waiting: no worker is serving queue short" in page

    # a live worker on that queue (its presence row, as a running worker keeps it): nothing to say
    presence.beat("short-worker@test", ["short"], {}, 1)
    presence.reset_cache()
    try:
        assert waiting_of(client, job.id) is None
        assert 'id="waiting"' not in console_page(server.base_url, job.id)
    finally:
        presence.leave("short-worker@test")
        presence.reset_cache()


def test_what_a_job_waits_on_follows_its_state() -> None:
    from datetime import timedelta
    from types import SimpleNamespace

    from models.base import utcnow

    at = utcnow() - timedelta(seconds=100)
    pipeline = {"validate": "short", "score": "gpu", "mitigate": "cpu", "train": "gpu", "gate": "short"}

    def says(status: str, stage: str | None, queues: set[str], **job: object) -> str | None:
        fields = {"admitted_at": at, "claimed_by": None, "heartbeat_at": at, "created_at": at, **job}
        row = SimpleNamespace(status=status, stage=stage, **fields)
        return presence.unserved_message(row, presence.Served(frozenset(queues), pipeline))

    gpu, short = "no worker is serving queue gpu", "no worker is serving queue short"
    assert says("validating_files", None, set()) == short  # the start message
    assert says("validating_files", None, {"short"}) is None
    assert says("running", "train", {"short", "cpu"}) == gpu  # handed on to training
    assert says("running", "mitigate", {"gpu"}) == "no worker is serving queue cpu"
    assert says("running", "gate", {"gpu", "cpu", "short"}) is None
    assert says("queued", "train", {"gpu"}) == short  # resumed: the RESUME message first
    assert says("queued", "train", {"short"}) == gpu  # then the stage it paused in
    assert says("running", "train", set(), claimed_by="w@h") is None  # a worker holds it
    assert says("validating_files", None, set(), admitted_at=None) is None  # waits for its turn
    assert says("paused", "train", set()) is None and says("succeeded", "gate", set()) is None
    unknown = SimpleNamespace(
        status="running", stage="score", admitted_at=at, claimed_by=None, heartbeat_at=at, created_at=at
    )
    assert presence.unserved_message(unknown, presence.Served(frozenset())) == "no worker is running"


@pytest.mark.slow
def test_a_job_handed_to_a_queue_no_worker_serves_says_so(tmp_path: Path) -> None:
    """A real worker on the short queue only: it validates the job, which then waits on gpu and says so; the
    worker's presence row goes when it stops."""
    from sqlalchemy import select

    from cli.stack import stop, worker_command
    from models.db import session_scope
    from models.tables import WorkerPresence
    from tests.e2e.harness import REPO, chat_rows, e2e_stack, upload
    from worker.stages.all import PIPELINE

    with e2e_stack("embedded", tmp_path / "home") as stack:
        client = stack.sdk("acme")
        job = client.fine_tuning.jobs.create(model="tiny", training_file=upload(client, chat_rows(12)))
        wait_for(lambda: waiting_of(client, job.id) is not None, "the job to say it waits", 30)
        assert waiting_of(client, job.id) == "no worker is serving queue short"
        with (tmp_path / "worker.log").open("ab") as log:
            worker = subprocess.Popen(
                worker_command("short", name="shortonly", log_level="INFO"), cwd=REPO, stdout=log, stderr=log
            )
        try:
            wait_for(
                lambda: waiting_of(client, job.id) == "no worker is serving queue gpu",
                "the validated job to wait on gpu",
                180,
            )
            assert client.fine_tuning.jobs.retrieve(job.id).model_extra["stage"] == "score"  # type: ignore[index]
            assert "waiting: no worker is serving queue gpu" in console_page(stack.base_url, job.id)
            with session_scope() as s:
                row = s.scalars(select(WorkerPresence)).one()
                assert row.queues == "short"
                assert row.stage_queues == {spec.name: spec.queue for spec in PIPELINE.specs}
        finally:
            stop(worker)
        with session_scope() as s:
            assert s.scalars(select(WorkerPresence)).all() == []  # it left on its way out
