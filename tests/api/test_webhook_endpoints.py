"""The openai SDK's own webhook calls (issue 28), each through ``openai.OpenAI(
_strict_response_validation=True)`` against a live server: ``client.webhooks.create`` (the secret shown
once), ``list`` (paged), ``retrieve``, ``update``, ``delete``, ``rotate_secret`` (with and without keeping
the old secret for 24 hours), ``test`` (a signed sample event delivered to a real receiver on 127.0.0.1,
which verifies it with the SDK's own ``client.webhooks.verify_signature``) and
``client.webhooks.event_types.list``; OpenAI error shapes naming the field, the address policy on create,
update and test, tenancy, and ``/v1/webhooks`` kept as an alias.

127.0.0.1 is not a public address: the tests that register it allow it (TUNEGATE_WEBHOOK_ALLOWED_TARGETS),
as a private deployment would."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import openai
import pytest
from openai.types.webhooks import FineTuningJobSucceededWebhookEvent
from sqlalchemy import update

from models.base import utcnow
from models.db import session_scope
from models.tables import WebhookEndpoint
from tests.api.conftest import new_key, sdk
from tests.api.server import Server, free_port
from tunegate.settings import reset_settings

URL = "https://hooks.example.com/tunegate"
OURS = [
    "fine_tuning.job.succeeded",
    "fine_tuning.job.failed",
    "fine_tuning.job.cancelled",
    "fine_tuning.job.flagged",
    "fine_tuning.job.repaired",
    "fine_tuning.job.overridden",
]


class VerifyingReceiver:
    """A real HTTP receiver on 127.0.0.1 that checks each request as an application would, with the SDK's
    ``client.webhooks.verify_signature`` and ``secret``: 200 (or ``status``) when it verifies, else 401."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.secret = ""
        self.status = 200
        self.requests: list[tuple[bytes, dict[str, str], bool]] = []  # body, headers, verified
        self._server: ThreadingHTTPServer | None = None
        self._sdk = openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9/v1")

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    receiver._sdk.webhooks.verify_signature(body, headers, secret=receiver.secret)
                    verified = True
                except openai.InvalidWebhookSignatureError:
                    verified = False
                receiver.requests.append((body, headers, verified))
                self.send_response(receiver.status if verified else 401)
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
def receiver() -> Iterator[VerifyingReceiver]:
    r = VerifyingReceiver()
    r.start()
    yield r
    r.stop()


@pytest.fixture
def loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", '["127.0.0.1/32"]')
    monkeypatch.setenv("TUNEGATE_WEBHOOK_TIMEOUT_S", "5")
    reset_settings()


def _create(client: openai.OpenAI, url: str = URL, **kw: Any) -> Any:
    args: dict[str, Any] = {"name": "ci hooks", "event_types": ["fine_tuning.job.failed"], **kw}
    return client.webhooks.create(url=url, **args)


def _backdate(endpoint_id: str) -> None:
    """Created and last changed a minute ago, so a change shows in ``updated_at`` (whole seconds)."""
    past = utcnow() - timedelta(minutes=1)
    with session_scope() as s:
        s.execute(update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).values(updated_at=past))


# --- the SDK's calls ------------------------------------------------------------------------------------
def test_create_shows_the_secret_once_then_list_retrieve_update_delete(client: openai.OpenAI) -> None:
    """Before issue 28 every one of these calls answered 404 (tunegate served only /v1/webhooks)."""
    made = _create(client, event_types=["fine_tuning.job.succeeded", "fine_tuning.job.failed"])
    assert made.object == "webhook_endpoint" and made.id.startswith("wh_")
    assert (made.name, made.url, made.event_types) == (
        "ci hooks",
        URL,
        ["fine_tuning.job.succeeded", "fine_tuning.job.failed"],
    )
    assert made.signing_secret.startswith("whsec_")
    assert made.signing_secret_hint == f"whsec_...{made.signing_secret[-4:]}"
    assert made.updated_at == made.created_at
    [listed] = client.webhooks.list()
    got = client.webhooks.retrieve(made.id)
    for shown in (listed, got):
        assert not hasattr(shown, "signing_secret") and made.signing_secret not in shown.model_dump_json()
        assert (shown.id, shown.name, shown.url, shown.event_types) == (
            made.id,
            made.name,
            made.url,
            made.event_types,
        )
        assert shown.signing_secret_hint == made.signing_secret_hint
    changed = client.webhooks.update(made.id, name="renamed", event_types=["fine_tuning.job.cancelled"])
    assert (changed.name, changed.event_types, changed.url) == ("renamed", ["fine_tuning.job.cancelled"], URL)
    assert made.signing_secret not in changed.model_dump_json()
    assert client.webhooks.retrieve(made.id).name == "renamed"
    gone = client.webhooks.delete(made.id)
    assert (gone.id, gone.deleted, gone.object) == (made.id, True, "webhook_endpoint.deleted")
    assert list(client.webhooks.list()) == []
    with pytest.raises(openai.NotFoundError):
        client.webhooks.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        client.webhooks.delete(made.id)


def test_event_types_are_the_fine_tuning_events_tunegate_sends(client: openai.OpenAI) -> None:
    types = client.webhooks.event_types.list()
    assert types.object == "list" and types.data == OURS


def test_list_pages_newest_first(client: openai.OpenAI) -> None:
    ids = [_create(client, name=f"hook {i}").id for i in range(5)]
    page = client.webhooks.list(limit=2)
    assert [w.id for w in page.data] == ids[::-1][:2] and page.has_more
    assert [w.id for w in client.webhooks.list(limit=2)] == ids[::-1]  # the SDK follows after=last_id
    last = client.webhooks.list(limit=2, after=ids[1])
    assert [w.id for w in last.data] == [ids[0]] and not last.has_more


def test_update_moves_updated_at_only_on_a_change(client: openai.OpenAI) -> None:
    made = _create(client)
    _backdate(made.id)
    before = client.webhooks.retrieve(made.id).updated_at
    assert before is not None and before < made.created_at
    same = client.webhooks.update(made.id, name="ci hooks", event_types=["fine_tuning.job.failed"])
    assert same.updated_at == before  # nothing changed
    moved = client.webhooks.update(made.id, url="https://hooks.example.com/v2")
    assert moved.url == "https://hooks.example.com/v2" and moved.updated_at is not None
    assert moved.updated_at > before


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "https://hooks.example.com/a b"}, "url"),
        ({"event_types": ["batch.completed"]}, "event_types"),  # the SDK knows it; tunegate never sends it
        ({"event_types": []}, "event_types"),
        ({"name": ""}, "name"),
        ({"name": "x" * 300}, "name"),
    ],
)
def test_a_bad_field_is_a_400_naming_it(client: openai.OpenAI, kw: dict[str, Any], param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, **kw)
    assert info.value.param == param and param in info.value.message
    body = info.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"
    assert list(client.webhooks.list()) == []


def test_a_missing_name_or_an_unknown_type_is_named(server: Server) -> None:
    with httpx.Client(
        base_url=f"{server.base_url}/v1", headers={"authorization": f"Bearer {new_key()}"}
    ) as api:
        r = api.post("/webhook_endpoints", json={"url": URL, "event_types": ["fine_tuning.job.failed"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "name"
        r = api.post("/webhook_endpoints", json={"url": URL, "name": "n", "event_types": ["job.boom"]})
        err = r.json()["error"]
        assert (err["param"], err["code"]) == ("event_types", "invalid_event_type")
        assert "job.boom" in err["message"] and "fine_tuning.job.flagged" in err["message"]
        assert api.get("/webhook_endpoints").json()["data"] == []


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://169.254.169.254/latest/", "http://[::1]/"])
def test_an_internal_url_is_refused_on_create_and_on_update(client: openai.OpenAI, url: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        _create(client, url=url)
    assert (info.value.param, info.value.code) == ("url", "webhook_url_not_allowed")
    made = _create(client)
    with pytest.raises(openai.BadRequestError) as info:
        client.webhooks.update(made.id, url=url)
    assert (info.value.param, info.value.code) == ("url", "webhook_url_not_allowed")
    assert client.webhooks.retrieve(made.id).url == URL  # unchanged
    assert [w.id for w in client.webhooks.list()] == [made.id]


def test_another_organizations_endpoint_is_a_404_for_every_call(
    server: Server, client: openai.OpenAI
) -> None:
    mine = _create(client)
    other = sdk(server, new_key())
    assert list(other.webhooks.list()) == []
    calls: list[Callable[[], object]] = [
        lambda: other.webhooks.retrieve(mine.id),
        lambda: other.webhooks.update(mine.id, name="taken"),
        lambda: other.webhooks.delete(mine.id),
        lambda: other.webhooks.rotate_secret(mine.id),
        lambda: other.webhooks.test(mine.id, event_type="fine_tuning.job.failed"),
        lambda: other.get(f"/webhook_endpoints/{mine.id}/deliveries", cast_to=object),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.param == "webhook_id" and info.value.code == "not_found"
    unchanged = client.webhooks.retrieve(mine.id)
    assert unchanged.name == "ci hooks" and unchanged.signing_secret_hint == mine.signing_secret_hint


# --- test: a signed sample event through the delivery path ----------------------------------------------
def test_test_sends_a_signed_event_the_sdk_verifies(
    client: openai.OpenAI, receiver: VerifyingReceiver, loopback_allowed: None
) -> None:
    made = _create(client, url=receiver.url, event_types=["fine_tuning.job.succeeded"])
    receiver.secret = made.signing_secret
    result = client.webhooks.test(made.id, event_type="fine_tuning.job.succeeded")
    assert result.object == "webhook_endpoint.test" and result.success is True
    assert (result.webhook_endpoint_id, result.event_type, result.status_code) == (
        made.id,
        "fine_tuning.job.succeeded",
        200,
    )
    [(body, headers, verified)] = receiver.requests
    assert verified
    event = client.webhooks.unwrap(body, headers, secret=made.signing_secret)
    assert isinstance(event, FineTuningJobSucceededWebhookEvent)  # the SDK's own type for the event
    assert event.id == headers["webhook-id"] and event.id.startswith("evt_") and event.data.id == "ftjob-test"
    assert headers["user-agent"] == "tunegate-webhooks/1"
    # our own event types can be tested too; the answer is the receiver's status, whatever it is
    receiver.status = 503
    ours = client.webhooks.test(made.id, event_type="fine_tuning.job.flagged")  # type: ignore[arg-type]
    assert (ours.event_type, ours.status_code, ours.success) == ("fine_tuning.job.flagged", 503, True)
    assert receiver.requests[-1][2] and b'"type":"fine_tuning.job.flagged"' in receiver.requests[-1][0]
    log = client.get(f"/webhook_endpoints/{made.id}/deliveries", cast_to=object)
    assert log == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}


def test_test_of_an_unknown_event_type_is_a_400_and_sends_nothing(
    client: openai.OpenAI, receiver: VerifyingReceiver, loopback_allowed: None
) -> None:
    made = _create(client, url=receiver.url)
    with pytest.raises(openai.BadRequestError) as info:
        client.webhooks.test(made.id, event_type="batch.completed")
    assert (info.value.param, info.value.code) == ("event_type", "invalid_event_type")
    assert receiver.requests == []


def test_test_of_a_receiver_that_is_down_is_an_error_without_its_words(
    client: openai.OpenAI, receiver: VerifyingReceiver, loopback_allowed: None
) -> None:
    made = _create(client, url=receiver.url)
    receiver.stop()
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.webhooks.test(made.id, event_type="fine_tuning.job.failed")
    assert (info.value.param, info.value.code) == ("url", "webhook_endpoint_unreachable")
    for leak in ("Errno", "ConnectError", "Connection refused"):
        assert leak not in info.value.message


def test_test_obeys_the_address_policy_of_delivery(
    client: openai.OpenAI,
    receiver: VerifyingReceiver,
    loopback_allowed: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint registered while the provider allowed 127.0.0.1, tested after it stopped allowing it:
    refused before any connection, as a delivery would be."""
    made = _create(client, url=receiver.url)
    monkeypatch.delenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS")
    reset_settings()
    with pytest.raises(openai.BadRequestError) as info:
        client.webhooks.test(made.id, event_type="fine_tuning.job.failed")
    assert (info.value.param, info.value.code) == ("url", "webhook_url_not_allowed")
    assert receiver.requests == []


# --- rotate_secret ------------------------------------------------------------------------------------
def test_rotate_secret_shows_the_new_secret_once_and_the_old_one_stops(
    client: openai.OpenAI, receiver: VerifyingReceiver, loopback_allowed: None
) -> None:
    made = _create(client, url=receiver.url)
    _backdate(made.id)
    rotated = client.webhooks.rotate_secret(made.id)
    assert rotated.id == made.id and rotated.signing_secret.startswith("whsec_")
    assert rotated.signing_secret != made.signing_secret
    assert rotated.signing_secret_hint == f"whsec_...{rotated.signing_secret[-4:]}"
    assert rotated.updated_at is not None and rotated.updated_at >= made.created_at
    shown = client.webhooks.retrieve(made.id)
    assert rotated.signing_secret not in shown.model_dump_json()
    assert shown.signing_secret_hint == rotated.signing_secret_hint
    receiver.secret = made.signing_secret  # a receiver not yet switched over
    assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 401
    receiver.secret = rotated.signing_secret
    assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 200


def test_rotate_secret_can_keep_the_old_one_for_24_hours(
    client: openai.OpenAI, receiver: VerifyingReceiver, loopback_allowed: None
) -> None:
    made = _create(client, url=receiver.url)
    rotated = client.webhooks.rotate_secret(made.id, keep_old_secret_active_for_24_hours=True)
    for secret in (made.signing_secret, rotated.signing_secret):  # both verify during the switch-over
        receiver.secret = secret
        assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 200
    assert len(receiver.requests[-1][1]["webhook-signature"].split()) == 2
    with session_scope() as s:  # a day later
        s.execute(
            update(WebhookEndpoint)
            .where(WebhookEndpoint.id == made.id)
            .values(previous_secret_expires_at=utcnow() - timedelta(seconds=1))
        )
    receiver.secret = made.signing_secret
    assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 401
    assert len(receiver.requests[-1][1]["webhook-signature"].split()) == 1
    # a rotation that does not keep the old secret also drops one kept before
    again = client.webhooks.rotate_secret(made.id, keep_old_secret_active_for_24_hours=True)
    newest = client.webhooks.rotate_secret(made.id)
    receiver.secret = again.signing_secret
    assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 401
    receiver.secret = newest.signing_secret
    assert client.webhooks.test(made.id, event_type="fine_tuning.job.failed").status_code == 200


# --- /v1/webhooks, the alias ----------------------------------------------------------------------------
def test_the_v1_webhooks_alias_serves_the_same_endpoints(server: Server) -> None:
    key = new_key()
    client = sdk(server, key)
    with httpx.Client(base_url=f"{server.base_url}/v1", headers={"authorization": f"Bearer {key}"}) as api:
        old = api.post("/webhooks", json={"url": URL, "events": ["fine_tuning.job.failed"]}).json()
        assert old["secret"].startswith("whsec_") and old["events"] == ["fine_tuning.job.failed"]
        new = _create(client)
        assert [w["id"] for w in api.get("/webhooks").json()["data"]] == [new.id, old["id"]]
        seen = client.webhooks.retrieve(old["id"])
        assert (seen.name, seen.url, seen.event_types) == (
            "hooks.example.com",
            URL,
            ["fine_tuning.job.failed"],
        )
        assert seen.signing_secret_hint == f"whsec_...{old['secret'][-4:]}"
        assert api.delete(f"/webhooks/{new.id}").json()["deleted"] is True
        assert [w.id for w in client.webhooks.list()] == [old["id"]]
