"""/v1/webhooks on a live server: create (the secret shown once), list, retrieve, delete, validation,
tenancy, and the delivery log of a job cancelled through the API."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.api.conftest import new_key, processed_file
from tests.api.server import Server
from tests.utils.broker import queued_tasks

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
    assert d["event_id"].startswith("evt_") and d["last_error"] is None and d["next_attempt_at"] is not None
    sent = [args for name, args in queued_tasks() if name == "tunegate.webhook.deliver"]
    assert [d["id"]] in sent


def test_an_org_has_at_most_twenty_endpoints(api: httpx.Client) -> None:
    for _ in range(20):
        assert _create(api).status_code == 200
    r = _create(api)
    assert r.status_code == 400 and r.json()["error"]["code"] == "too_many_webhooks"
    assert len(api.get("/webhooks").json()["data"]) == 20
