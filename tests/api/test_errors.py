"""The single error mapping: unexpected errors give a 500 in the OpenAI error shape, with a request id."""

from __future__ import annotations

from fastapi.testclient import TestClient

from api.main import create_app
from tunegate.errors import QuotaExceeded, RateLimited


def _app_with_failing_routes() -> TestClient:
    app = create_app()

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internals")

    @app.get("/limited")
    def limited() -> None:
        raise RateLimited("slow down", retry_after=7)

    @app.get("/blocked")
    def blocked() -> None:
        raise QuotaExceeded("over the quota", code="storage_quota_exceeded")

    return TestClient(app, raise_server_exceptions=False)


def test_unexpected_error_is_500_in_error_shape() -> None:
    r = _app_with_failing_routes().get("/boom")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err == {"message": err["message"], "type": "server_error", "param": None, "code": "internal_error"}
    assert "secret" not in err["message"] and r.headers["x-request-id"].startswith("req_")


def test_tunegate_errors_keep_their_status_and_headers() -> None:
    client = _app_with_failing_routes()
    r = client.get("/limited")
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    r = client.get("/blocked")
    assert r.status_code == 403 and r.json()["error"]["code"] == "storage_quota_exceeded"
