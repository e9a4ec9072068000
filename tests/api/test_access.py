"""Tenants, keys, rate limits, error shape and request ids over HTTP."""

from __future__ import annotations

import httpx
import openai
import pytest

from models.db import session_scope
from models.keys import revoke_key
from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import Server

ERROR_KEYS = {"message", "type", "param", "code"}


def test_bad_missing_and_revoked_keys_are_401(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    from tunegate.settings import reset_settings

    # refused at once (tests/api/core/test_auth.py: the TTL)
    monkeypatch.setenv("TUNEGATE_AUTH_CACHE_TTL_S", "0")
    reset_settings()
    with pytest.raises(openai.AuthenticationError) as info:
        sdk(server, "tg-not-a-real-key").files.list()
    assert info.value.code == "invalid_api_key"
    key = new_key()
    client = sdk(server, key)
    client.files.list()
    with session_scope() as session:
        revoke_key(session, key)
    with pytest.raises(openai.AuthenticationError) as info:
        client.files.list()
    assert info.value.code == "api_key_revoked"
    r = httpx.get(f"{server.base_url}/v1/files")
    assert r.status_code == 401 and set(r.json()["error"]) == ERROR_KEYS and r.headers["x-request-id"]


def test_other_orgs_objects_look_missing(server: Server) -> None:
    a, b = sdk(server, new_key()), sdk(server, new_key())
    fid = processed_file(a)
    job = a.fine_tuning.jobs.create(model="smollm2-135m", training_file=fid)
    jobs = b.fine_tuning.jobs
    calls = [
        lambda: b.files.retrieve(fid),
        lambda: b.files.content(fid),
        lambda: b.files.delete(fid),
        lambda: jobs.retrieve(job.id),
        lambda: jobs.cancel(job.id),
        lambda: jobs.list_events(job.id),
        lambda: jobs.checkpoints.list(job.id),
    ]
    for call in calls:
        with pytest.raises(openai.NotFoundError):
            call()
    assert b.files.list().data == [] and list(b.fine_tuning.jobs.list()) == []
    auth = {"authorization": f"Bearer {b.api_key}"}
    missing = httpx.get(f"{server.base_url}/v1/files/file-nope", headers=auth)
    foreign = httpx.get(f"{server.base_url}/v1/files/{fid}", headers=auth)
    assert missing.status_code == foreign.status_code == 404
    assert missing.json()["error"]["code"] == foreign.json()["error"]["code"]


def test_rate_limit_is_429_with_retry_after(server: Server) -> None:
    client = sdk(server, new_key(rate_limit_per_minute=3))
    for _ in range(3):
        client.files.list()
    with pytest.raises(openai.RateLimitError) as info:
        client.files.list()
    assert int(info.value.response.headers["retry-after"]) >= 1
    assert info.value.body["type"] == "rate_limit_error"  # type: ignore[index]
    sdk(server, new_key()).files.list()  # other organizations are not affected


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/nope", 404),
        ("DELETE", "/v1/fine_tuning/jobs", 405),
        ("PUT", "/v1/files", 405),
        ("POST", "/v1/fine_tuning/jobs", 422),
        ("GET", "/v1/files?limit=0", 422),
    ],
)
def test_framework_errors_use_the_error_shape(server: Server, method: str, path: str, status: int) -> None:
    headers = {"authorization": f"Bearer {new_key()}"}
    body = b"{}" if method == "POST" else None
    r = httpx.request(method, f"{server.base_url}{path}", headers=headers, content=body)
    assert r.status_code == status
    assert set(r.json()["error"]) == ERROR_KEYS and r.headers["x-request-id"].startswith("req_")


def test_healthz_needs_no_auth(server: Server) -> None:
    r = httpx.get(f"{server.base_url}/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok", "database": "ok"}
    assert r.headers["x-request-id"].startswith("req_")
    # Nothing but /healthz is served without a key, the API description included.
    anonymous = httpx.get(f"{server.base_url}/openapi.json")
    assert anonymous.status_code == 401 and set(anonymous.json()["error"]) == ERROR_KEYS
    authed = httpx.get(f"{server.base_url}/openapi.json", headers={"authorization": f"Bearer {new_key()}"})
    assert authed.status_code == 200 and "/v1/files" in authed.json()["paths"]
    assert httpx.get(f"{server.base_url}/docs").status_code == 404


def test_unstorable_values_are_4xx_not_500(server: Server) -> None:
    headers = {"authorization": f"Bearer {new_key()}"}
    r = httpx.get(f"{server.base_url}/v1/files", params={"after": "file-\x00"}, headers=headers)
    assert r.status_code in (200, 400) and set(r.json()) != {"detail"}
    long_name = "n" * 600 + ".jsonl"
    r = httpx.post(
        f"{server.base_url}/v1/files",
        headers=headers,
        data={"purpose": "user_data"},
        files={"file": (long_name, b"x")},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_filename"
