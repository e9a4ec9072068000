"""Webhook delivery to a real HTTP receiver on 127.0.0.1: signatures the openai SDK verifies, retries through
an outage, idempotency, giving up, a lost attempt swept, and a real Celery worker doing all of it."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest
from openai.types.webhooks import FineTuningJobFailedWebhookEvent
from sqlalchemy import select, update

from cli.stack import worker_command
from models import webhooks as hooks
from models.base import utcnow
from models.db import reset_engine, session_scope
from models.jobs import JobStatus, transition
from models.keys import get_or_create_org
from models.tables import Job, WebhookDelivery
from tests.api.server import free_port, pg_schema_url
from tests.utils.broker import queued_tasks
from tests.worker.jobfactory import make_job
from tunegate.settings import get_settings, reset_settings
from worker import webhooks

REPO = Path(__file__).resolve().parents[2]


class Receiver:
    """A threaded ``http.server`` on a fixed port that records every request; ``start``/``stop`` make an
    outage (connection refused in between), ``status`` is what it answers."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.status = 200
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def _fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {
        "WEBHOOK_RETRY_BACKOFF_S": "0.01",
        "WEBHOOK_MAX_RETRY_DELAY_S": "0.05",
        "WEBHOOK_TASK_RETRIES": "2",
        "WEBHOOK_TIMEOUT_S": "5",
    }.items():
        monkeypatch.setenv(f"TUNEGATE_{k}", v)
    reset_settings()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def home(
    request: pytest.FixtureRequest, tunegate_home: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    """A migrated home on SQLite or on a fresh PostgreSQL schema (the broker stays embedded), fast retries."""
    import migrations

    _fast_retries(monkeypatch)
    with ExitStack() as stack:
        if request.param == "postgres":
            monkeypatch.setenv("TUNEGATE_DATABASE_URL", stack.enter_context(pg_schema_url()))
            stack.callback(reset_engine)
        reset_settings()
        reset_engine()
        migrations.upgrade()
        yield tunegate_home


@pytest.fixture
def embedded_home(migrated_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _fast_retries(monkeypatch)
    return migrated_home


def _endpoint(url: str, events: list[str]) -> tuple[str, str]:
    """A new endpoint of org ``acme`` (the jobs' org); returns its id and secret."""
    with session_scope() as s:
        org_id = get_or_create_org(s, "acme").id
        row = hooks.create_endpoint(s, org_id=org_id, url=url, events=events)
        return row.id, row.secret


def _finish(job_id: str, status: JobStatus = JobStatus.FAILED) -> str:
    """Move the job to a terminal status through ``transition``; returns its one delivery's id."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, status, message=f"to {status.value}")
    with session_scope() as s:
        return s.scalars(select(WebhookDelivery.id)).one()


def _delivery(delivery_id: str) -> WebhookDelivery:
    with session_scope() as s:
        row = s.get(WebhookDelivery, delivery_id)
        assert row is not None
        return row


def _deliver_messages() -> list[list[str]]:
    """The args of every webhook delivery message queued so far (other messages are drained too)."""
    return [args for name, args in queued_tasks() if name == "tunegate.webhook.deliver"]


def _when_due(delivery_id: str) -> str:
    """Run the task body once the delivery's backoff has passed (the backoff is tens of milliseconds)."""
    due = _delivery(delivery_id).next_attempt_at
    time.sleep(max(0.0, (due - utcnow()).total_seconds()) + 0.01)
    return webhooks.deliver(delivery_id)


def test_a_delivery_is_signed_so_the_openai_sdk_verifies_it(home: Path, receiver: Receiver) -> None:
    receiver.start()
    job_id = make_job("tiny")
    _, secret = _endpoint(receiver.url, ["fine_tuning.job.failed"])
    delivery_id = _finish(job_id)
    assert _deliver_messages() == [[delivery_id]]  # enqueued once the transition committed
    assert webhooks.deliver(delivery_id) == "delivered"
    [(body, headers)] = receiver.requests
    sdk = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    event = sdk.webhooks.unwrap(body, headers, secret=secret)
    assert isinstance(event, FineTuningJobFailedWebhookEvent)  # the SDK's own type for this event
    assert (event.type, event.data.id, event.object) == ("fine_tuning.job.failed", job_id, "event")
    assert event.id == headers["webhook-id"] and event.id.startswith("evt_")
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(body.replace(job_id.encode(), b"ftjob-other"), headers, secret=secret)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(body, headers, secret=hooks.new_secret())
    row = _delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 1, 200, None)


def test_running_the_task_twice_sends_once(home: Path, receiver: Receiver) -> None:
    receiver.start()
    _endpoint(receiver.url, ["fine_tuning.job.succeeded"])
    job_id = make_job("tiny", status="running", stage="gate")
    delivery_id = _finish(job_id, JobStatus.SUCCEEDED)
    assert webhooks.deliver(delivery_id) == "delivered"
    assert webhooks.deliver(delivery_id) == "skipped"  # a redelivered message
    assert webhooks.sweep(now=utcnow() + timedelta(days=1)) == []  # nothing left to send, ever
    assert len(receiver.requests) == 1


def test_a_receiver_down_for_a_while_gets_the_event_exactly_once(home: Path, receiver: Receiver) -> None:
    job_id = make_job("tiny")
    _endpoint(receiver.url, ["fine_tuning.job.cancelled"])
    delivery_id = _finish(job_id, JobStatus.CANCELLED)
    _deliver_messages()
    statuses = [webhooks.deliver(delivery_id)] + [_when_due(delivery_id) for _ in range(3)]
    assert statuses == ["pending"] * 4  # connection refused each time, retried
    row = _delivery(delivery_id)
    assert row.attempts == 4 and row.last_status_code is None and "ConnectError" in (row.last_error or "")
    # retries 1 and 2 were scheduled by the task itself; later ones are left to the sweep
    assert _deliver_messages() == [[delivery_id], [delivery_id]]
    receiver.start()
    receiver.status = 503
    assert _when_due(delivery_id) == "pending"
    assert _delivery(delivery_id).last_status_code == 503
    receiver.status = 200
    time.sleep(0.06)  # past the capped backoff
    assert webhooks.sweep() == [delivery_id]
    assert _deliver_messages() == [[delivery_id]]
    assert webhooks.deliver(delivery_id) == "delivered"
    assert webhooks.sweep(now=utcnow() + timedelta(days=1)) == []
    assert webhooks.deliver(delivery_id) == "skipped"
    ok = [h for _, h in receiver.requests[1:]]  # the first request got the 503
    assert len(ok) == 1 and ok[0]["webhook-id"] == receiver.requests[0][1]["webhook-id"]
    row = _delivery(delivery_id)
    assert (row.status, row.attempts, row.last_status_code, row.last_error) == ("delivered", 6, 200, None)


def test_past_the_give_up_time_a_failed_attempt_marks_the_delivery_failed(
    home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_WEBHOOK_GIVE_UP_AFTER_S", "0")
    reset_settings()
    _endpoint(receiver.url, ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    assert webhooks.deliver(delivery_id) == "failed"
    row = _delivery(delivery_id)
    assert row.status == "failed" and "gave up after 1 attempts" in (row.last_error or "")
    receiver.start()
    assert webhooks.sweep(now=utcnow() + timedelta(days=1)) == []
    assert webhooks.deliver(delivery_id) == "skipped" and receiver.requests == []


def test_an_attempt_whose_worker_died_is_sent_again_after_its_lease(home: Path, receiver: Receiver) -> None:
    receiver.start()
    _endpoint(receiver.url, ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    with session_scope() as s:
        lost = webhooks.claim(s, delivery_id, get_settings())  # the worker dies before posting
    assert lost is not None and _delivery(delivery_id).status == "sending"
    assert webhooks.sweep() == []  # its lease still holds
    with session_scope() as s:  # the lease runs out
        s.execute(update(WebhookDelivery).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert webhooks.sweep() == [delivery_id]
    assert webhooks.deliver(delivery_id) == "delivered"
    with session_scope() as s:
        # the dead attempt's late record is fenced off
        status, _ = webhooks.record(
            s, lost, webhooks.Result(ok=False, status_code=500, error="late"), get_settings()
        )
    assert status == "superseded"
    row = _delivery(delivery_id)
    assert (row.status, row.attempts, len(receiver.requests)) == ("delivered", 2, 1)


def test_a_deleted_endpoint_is_not_sent_to(home: Path, receiver: Receiver) -> None:
    receiver.start()
    endpoint_id, _ = _endpoint(receiver.url, ["fine_tuning.job.failed"])
    job_id = make_job("tiny")
    delivery_id = _finish(job_id)
    with session_scope() as s:
        hooks.delete_endpoint(s, org_id=get_or_create_org(s, "acme").id, endpoint_id=endpoint_id)
    assert webhooks.deliver(delivery_id) == "skipped" and receiver.requests == []


def test_a_real_worker_delivers_through_an_outage(
    embedded_home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole path with a real Celery worker process: enqueued after commit, retried by the task, then
    by the reaper thread's sweep, delivered once the receiver is back."""
    monkeypatch.setenv("TUNEGATE_REAP_INTERVAL_S", "1")
    home = embedded_home
    job_id = make_job("tiny")
    _endpoint(receiver.url, ["fine_tuning.job.failed"])
    with (home / "worker.log").open("ab") as log:
        worker = subprocess.Popen(
            worker_command("cpu", name="hooks"), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        delivery_id = _finish(job_id)
        _wait(lambda: _delivery(delivery_id).attempts >= 4, home)  # past the task's own 2 retries
        assert _delivery(delivery_id).status in ("pending", "sending")
        receiver.start()
        _wait(lambda: _delivery(delivery_id).status == "delivered", home)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert len(receiver.requests) == 1


def _wait(cond: Callable[[], bool], home: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out; worker log:\n{(home / 'worker.log').read_text()[-3000:]}")


def test_sweep_skips_rows_whose_message_is_live(home: Path, receiver: Receiver) -> None:
    _endpoint(receiver.url, ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    assert webhooks.sweep() == []  # the after-commit message was just sent
    with session_scope() as s:
        s.execute(update(WebhookDelivery).values(enqueued_at=None))
    assert webhooks.sweep() == [delivery_id]
    assert webhooks.sweep() == []
