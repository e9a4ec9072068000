"""/v1/webhooks, the alias of /v1/webhook_endpoints (the SDK's calls: test_webhook_endpoints.py), on a live
server: create (the secret shown once), list, retrieve, delete, validation, tenancy, the delivery log of a job
cancelled through the API; URLs that point inside the provider's network refused (SSRF, issue 29), and a
delivery log that shows a status class, never the receiver's words."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import new_key, processed_file
from tests.api.server import Server
from tests.utils.broker import queued_tasks
from tests.worker.test_webhooks import Receiver
from tunegate.settings import reset_settings

MODEL = "smollm2-135m"
URL = "https://hooks.example.com/tunegate"


def _http(server: Server, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{server.base_url}/v1", headers={"authorization": f"Bearer {key}"}, timeout=30
    )


@pytest.fixture
def api(server: Server) -> Iterator[httpx.Client]:
    """Plain HTTP for a brand-new organization (the webhooks routes are an extension the SDK lacks)."""
    with _http(server, new_key()) as c:
        yield c


def _create(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/webhooks", json={"url": URL, "events": ["fine_tuning.job.failed"], **body})


def test_create_shows_the_secret_once_then_list_retrieve_delete(api: httpx.Client) -> None:
    r = _create(api, events=["fine_tuning.job.succeeded", "fine_tuning.job.flagged"])
    assert r.status_code == 200, r.text
    made = r.json()
    assert made["object"] == "webhook_endpoint" and made["url"] == URL and made["id"].startswith("wh_")
    assert made["events"] == ["fine_tuning.job.succeeded", "fine_tuning.job.flagged"]
    assert made["secret"].startswith("whsec_") and len(base64.b64decode(made["secret"][6:])) == 32
    listed = api.get("/webhooks").json()
    assert [w["id"] for w in listed["data"]] == [made["id"]]
    got = api.get(f"/webhooks/{made['id']}").json()
    for shown in (listed["data"][0], got):
        assert "secret" not in shown and made["secret"] not in str(shown)
        assert shown["url"] == URL and shown["events"] == made["events"]
    assert api.delete(f"/webhooks/{made['id']}").json() == {
        "id": made["id"],
        "object": "webhook_endpoint",
        "deleted": True,
    }
    assert api.get("/webhooks").json()["data"] == []
    assert api.get(f"/webhooks/{made['id']}").status_code == 404
    assert api.delete(f"/webhooks/{made['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"url": "ftp://hooks.example.com/x"}, "url"),
        ({"url": "hooks.example.com/x"}, "url"),
        ({"url": "https:///no-host"}, "url"),
        ({"url": "https://hooks.example.com:99999/x"}, "url"),
        ({"url": "https://hooks.example.com/a b"}, "url"),
        ({"url": "https://h.example.com/" + "a" * 2100}, "url"),
        ({"url": None}, "url"),
        ({"events": ["fine_tuning.job.exploded"]}, "events"),
        ({"events": []}, "events"),
        ({"events": None}, "events"),
    ],
)
def test_bad_url_or_events_is_a_400_naming_the_field(
    api: httpx.Client, body: dict[str, Any], param: str
) -> None:
    r = _create(api, **body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and param in err["message"]
    assert api.get("/webhooks").json()["data"] == []


def test_unknown_event_type_is_named(api: httpx.Client) -> None:
    err = _create(api, events=["fine_tuning.job.failed", "job.boom"]).json()["error"]
    assert (
        err["param"] == "events"
        and "job.boom" in err["message"]
        and "fine_tuning.job.flagged" in err["message"]
    )


def test_an_org_never_sees_or_deletes_another_orgs_endpoint(server: Server, api: httpx.Client) -> None:
    mine = _create(api).json()["id"]
    with _http(server, new_key()) as other:
        assert other.get("/webhooks").json()["data"] == []
        for path in (f"/webhooks/{mine}", f"/webhooks/{mine}/deliveries"):
            r = other.get(path)
            assert r.status_code == 404 and r.json()["error"]["param"] == "webhook_id"
        assert other.delete(f"/webhooks/{mine}").status_code == 404
    assert [w["id"] for w in api.get("/webhooks").json()["data"]] == [mine]


def test_a_cancelled_job_writes_one_pending_delivery_and_enqueues_it(server: Server) -> None:
    key = new_key()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    with _http(server, key) as api:
        hook = _create(api, events=["fine_tuning.job.cancelled"]).json()["id"]
        other = _create(api, events=["fine_tuning.job.succeeded"]).json()["id"]
        job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
        client.fine_tuning.jobs.cancel(job.id)
        client.fine_tuning.jobs.cancel(job.id)  # already cancelled: no second event
        log = api.get(f"/webhooks/{hook}/deliveries").json()
        assert api.get(f"/webhooks/{other}/deliveries").json()["data"] == []  # not subscribed
    [d] = log["data"]
    assert (d["event_type"], d["job_id"], d["status"], d["attempts"]) == (
        "fine_tuning.job.cancelled",
        job.id,
        "pending",
        0,
    )
    assert d["event_id"].startswith("evt_") and d["next_attempt_at"] is not None
    assert d["last_result"] is None and d["last_error"] is None
    sent = [args for name, args in queued_tasks() if name == "tunegate.webhook.deliver"]
    assert [d["id"]] in sent


def test_an_org_has_at_most_twenty_endpoints(api: httpx.Client) -> None:
    for _ in range(20):
        assert _create(api).status_code == 200
    r = _create(api)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_webhooks"
    assert len(api.get("/webhooks").json()["data"]) == 20


# --- SSRF: where a webhook may point (tunegate/netguard.py) ----------------------------------------------
INTERNAL = [
    "http://127.0.0.1/hook",
    "http://localhost/hook",
    "http://localhost./hook",
    "http://sub.localhost:8080/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[::ffff:7f00:1]/hook",
    "http://0.0.0.0/hook",
    "http://0/hook",
    "http://2130706433/hook",
    "http://0x7f000001/hook",
    "http://0177.0.0.1/hook",
    "http://127.1/hook",
    "http://10.0.0.1/hook",
    "http://192.168.0.10/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/hook",
    "http://[fd12:3456::1]/hook",
    "http://[2002:a9fe:a9fe::]/hook",  # 6to4 of 169.254.169.254
    "http://[64:ff9b::a9fe:a9fe]/hook",  # NAT64 of 169.254.169.254
    "http://127.0.0.1:5432/",
    "http://127.0.0.1:6379/",
    "http://postgres:5432/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://hooks.example.com@127.0.0.1/hook",
    "http://ⓛocalhost/hook",
]


@pytest.mark.parametrize("url", INTERNAL)
def test_a_url_pointing_inside_is_refused_at_registration(api: httpx.Client, url: str) -> None:
    r = _create(api, url=url)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (
        "url",
        "webhook_url_not_allowed",
        "invalid_request_error",
    )
    assert err["message"].startswith("'url'")
    assert api.get("/webhooks").json()["data"] == []


def test_the_provider_setting_allows_named_networks_and_hosts(
    api: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", '["127.0.0.1/32", "receiver.internal"]')
    reset_settings()
    for url in ("http://127.0.0.1:8000/hook", "http://receiver.internal/hook"):
        assert _create(api, url=url).status_code == 200, url
    r = _create(api, url="http://10.0.0.1/hook")  # not named: still refused
    assert r.status_code == 400 and r.json()["error"]["param"] == "url"


def test_the_delivery_log_shows_only_a_status_class(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A receiver answering 403 with a body, then gone (connection refused), then refused by the policy:
    the tenant's log says 4xx, connection_failed, refused_by_policy, and nothing of what the receiver said."""
    from worker import webhooks as delivery

    for k, v in {
        "WEBHOOK_ALLOWED_TARGETS": '["127.0.0.1/32"]',
        "WEBHOOK_RETRY_BACKOFF_S": "0.01",
        "WEBHOOK_MAX_RETRY_DELAY_S": "0.02",
    }.items():
        monkeypatch.setenv(f"TUNEGATE_{k}", v)
    reset_settings()
    receiver = Receiver()
    receiver.status, receiver.answer = 403, b"Forbidden: instance metadata service (iam role web-prod)"
    receiver.start()
    key = new_key()
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0)
    try:
        with _http(server, key) as api:
            hook = _create(api, url=receiver.url, events=["fine_tuning.job.cancelled"]).json()["id"]
            job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
            client.fine_tuning.jobs.cancel(job.id)
            [d] = api.get(f"/webhooks/{hook}/deliveries").json()["data"]

            def attempt() -> dict[str, Any]:
                time.sleep(0.05)  # past the backoff
                assert delivery.deliver(d["id"]) == "pending"
                r = api.get(f"/webhooks/{hook}/deliveries")
                for leak in ("Forbidden", "metadata", "Connection refused", "ConnectError", "Errno", "HTTP"):
                    assert leak not in r.text, (leak, r.text)
                [shown] = r.json()["data"]
                assert "last_status_code" not in shown and shown["last_result"] == shown["last_error"]
                return dict(shown)

            shown = attempt()
            assert (shown["status"], shown["last_result"], shown["last_error"]) == ("pending", "4xx", "4xx")
            assert len(receiver.requests) == 1
            receiver.stop()
            shown = attempt()
            assert (shown["last_result"], shown["attempts"]) == ("connection_failed", 2)
            monkeypatch.delenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS")  # the provider tightens the policy
            reset_settings()
            receiver.start()
            shown = attempt()
            assert (shown["last_result"], shown["attempts"]) == ("refused_by_policy", 3)
            assert len(receiver.requests) == 1  # nothing more was sent
    finally:
        receiver.stop()
