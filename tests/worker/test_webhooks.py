"""Webhook delivery to a real HTTP receiver on 127.0.0.1: signatures the openai SDK verifies, retries through
an outage, idempotency, giving up, a lost attempt swept, and a real Celery worker doing all of it; and the
address policy at delivery time (tunegate/netguard.py): a name resolving inside is refused before any
connection, the connection is pinned to the checked address, redirects are not followed.

127.0.0.1 is not a public address, so these tests allow it (TUNEGATE_WEBHOOK_ALLOWED_TARGETS), as a
private deployment would. A name that must resolve to it comes from a resolver passed to ``deliver``: a
plain function answering what a DNS server would, while the receiver and the connection stay real."""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
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
from models.tables import Job, WebhookDelivery, WebhookEndpoint
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
        self.connections = 0  # TCP connections accepted, answered or not
        self.status = 200
        self.headers: dict[str, str] = {}  # extra answer headers (a redirect's location)
        self.answer = b""
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self.send_response(receiver.status)
                for k, v in receiver.headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(receiver.answer)))
                self.end_headers()
                self.wfile.write(receiver.answer)

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            def get_request(self) -> tuple[socket.socket, object]:
                conn = super().get_request()
                receiver.connections += 1
                return conn

        self._server = Server(("127.0.0.1", self.port), Handler)
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
        "WEBHOOK_ALLOWED_TARGETS": '["127.0.0.1/32"]',  # the receivers listen there
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


def test_after_a_rotation_that_keeps_the_old_secret_both_verify_for_a_day(
    home: Path, receiver: Receiver
) -> None:
    """``rotate_secret(keep_old_secret_active_for_24_hours=True)`` (issue 28): a job's event is signed with
    the new secret and the old one, so a receiver verifying with either accepts it; after the day, with the
    new one only."""
    receiver.start()
    endpoint_id, old = _endpoint(receiver.url, ["fine_tuning.job.failed", "fine_tuning.job.cancelled"])
    with session_scope() as s:
        org_id = get_or_create_org(s, "acme").id
        new = hooks.rotate_secret(s, org_id=org_id, endpoint_id=endpoint_id, keep_old=True).secret
    assert webhooks.deliver(_finish(make_job("tiny"))) == "delivered"
    sdk = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")
    body, headers = receiver.requests[-1]
    for secret in (old, new):
        assert sdk.webhooks.unwrap(body, headers, secret=secret).type == "fine_tuning.job.failed"
    later = make_job("tiny")
    with session_scope() as s:  # a day later
        s.execute(update(WebhookEndpoint).values(previous_secret_expires_at=utcnow() - timedelta(seconds=1)))
        job = s.get(Job, later)
        assert job is not None
        transition(s, job, JobStatus.CANCELLED, message="cancelled")
    with session_scope() as s:
        [delivery_id] = s.scalars(select(WebhookDelivery.id).where(WebhookDelivery.status == "pending")).all()
    assert webhooks.deliver(delivery_id) == "delivered"
    body, headers = receiver.requests[-1]
    sdk.webhooks.unwrap(body, headers, secret=new)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        sdk.webhooks.unwrap(body, headers, secret=old)


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
    assert row.attempts == 4 and row.last_status_code is None and row.last_error == "connection_failed"
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
    assert row.status == "failed" and row.last_error == "connection_failed"
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
            worker_command("short", name="hooks"), cwd=REPO, stdout=log, stderr=subprocess.STDOUT
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


# --- the address policy at delivery time -------------------------------------------------------------
def _dns(table: dict[str, list[str]]) -> tuple[list[str], Callable[[str, int], Sequence[str]]]:
    """A resolver answering from ``table`` (what a DNS server would say), and the names it was asked."""
    asked: list[str] = []

    def resolve(host: str, port: int) -> Sequence[str]:
        asked.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} does not resolve")
        return table[host]

    return asked, resolve


def _public_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS")
    reset_settings()


@pytest.mark.parametrize(
    ("answer", "allowed"),
    [
        (["127.0.0.1"], None),  # a public-looking name that resolves to loopback
        (["93.184.215.14", "127.0.0.1"], None),  # one of its addresses is loopback
        (["::ffff:127.0.0.1"], None),  # an IPv4-mapped loopback
        (["127.0.0.1", "10.0.0.1"], '["127.0.0.1/32"]'),  # one address outside the allowed network
    ],
)
def test_a_name_resolving_inside_is_refused_at_delivery_before_any_connection(
    home: Path,
    receiver: Receiver,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    answer: list[str],
    allowed: str | None,
) -> None:
    """The endpoint was registered under a name that resolved to a public address; at delivery it resolves
    to 127.0.0.1, where a real receiver listens. Nothing reaches it, and the log row says only why."""
    if allowed is None:
        _public_only(monkeypatch)
    else:
        monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", allowed)
        reset_settings()
    receiver.start()
    _endpoint(f"http://hooks.example.com:{receiver.port}/hook", ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    asked, resolve = _dns({"hooks.example.com": answer})
    with caplog.at_level(logging.WARNING, logger="worker.webhooks"):
        assert webhooks.deliver(delivery_id, resolver=resolve) == "pending"  # retried later: DNS may change
    assert asked == ["hooks.example.com"]
    assert receiver.connections == 0 and receiver.requests == []
    row = _delivery(delivery_id)
    assert (row.last_status_code, row.last_error) == (None, "refused_by_policy")
    assert "resolves to" in caplog.text and "refused_by_policy" in caplog.text  # the detail: server log only


def test_a_literal_internal_address_is_refused_at_delivery(
    home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endpoint stored before the policy (or allowed by a setting since removed) is refused when sent."""
    receiver.start()
    _endpoint(f"http://2130706433:{receiver.port}/hook", ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    _public_only(monkeypatch)
    asked, resolve = _dns({})
    assert webhooks.deliver(delivery_id, resolver=resolve) == "pending"
    assert asked == [] and receiver.connections == 0
    assert _delivery(delivery_id).last_error == "refused_by_policy"


def test_the_connection_is_pinned_to_the_checked_address(home: Path, receiver: Receiver) -> None:
    """``receiver.test`` exists in no DNS: the POST arrives only because it went to the address the policy
    checked, resolved once, with the registered name in the Host header."""
    receiver.start()
    _endpoint(f"http://Receiver.Test.:{receiver.port}/hook", ["fine_tuning.job.failed"])
    delivery_id = _finish(make_job("tiny"))
    answers = iter([["127.0.0.1"], ["10.9.9.9"]])  # a rebinding DNS: a second lookup would get another
    asked: list[str] = []

    def rebinding(host: str, port: int) -> Sequence[str]:
        asked.append(f"{host}:{port}")
        return next(answers)

    assert webhooks.deliver(delivery_id, resolver=rebinding) == "delivered"
    assert asked == [f"receiver.test:{receiver.port}"]
    [(_, headers)] = receiver.requests
    assert headers["host"] == f"receiver.test.:{receiver.port}"


def test_a_redirect_is_not_followed(home: Path, receiver: Receiver) -> None:
    other = Receiver()
    other.start()
    try:
        receiver.status, receiver.headers = 302, {"location": other.url}
        receiver.answer = b"moved to the metadata service"
        receiver.start()
        _endpoint(receiver.url, ["fine_tuning.job.failed"])
        delivery_id = _finish(make_job("tiny"))
        assert webhooks.deliver(delivery_id) == "pending"
        assert len(receiver.requests) == 1 and other.connections == 0 and other.requests == []
        row = _delivery(delivery_id)
        assert (row.last_status_code, row.last_error) == (302, "3xx")
    finally:
        other.stop()


def _self_signed(tmp: Path, name: str) -> tuple[Path, Path]:
    from datetime import UTC, datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_https_sends_the_registered_name_as_the_tls_server_name(home: Path, tmp_path: Path) -> None:
    """A real TLS listener on 127.0.0.1 records the SNI it is asked for: the registered name, although the
    connection goes to the pinned address. Its self-signed certificate is then refused by the worker (the
    certificate is verified, for that name), so the attempt is a connection failure."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(*_self_signed(tmp_path, "receiver.test"))
    seen: list[str | None] = []
    ctx.sni_callback = lambda _sock, name, _ctx: seen.append(name)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass  # the client refuses the certificate: expected

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        _endpoint(f"https://receiver.test:{port}/hook", ["fine_tuning.job.failed"])
        delivery_id = _finish(make_job("tiny"))
        _, resolve = _dns({"receiver.test": ["127.0.0.1"]})
        assert webhooks.deliver(delivery_id, resolver=resolve) == "pending"
        thread.join(timeout=10)
    finally:
        listener.close()
    assert seen == ["receiver.test"]
    assert _delivery(delivery_id).last_error == "connection_failed"
