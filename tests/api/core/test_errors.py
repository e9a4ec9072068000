"""The single error mapping: unexpected errors give a 500 in the OpenAI error shape, with a request id."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from starlette.exceptions import HTTPException
from starlette.requests import Request

from api.core.errors import error_response
from api.main import create_app
from tunegate.errors import InvalidRequest, QuotaExceeded, RateLimited


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

    @app.get("/surrogate")
    def surrogate() -> None:  # an error quoting a request's text that holds a lone UTF-16 surrogate
        raise InvalidRequest("no file named 'f\ud800'", param="metadata.k\udc80")

    @app.get("/unsendable")
    def unsendable() -> None:  # an answer whose header cannot be sent (not Latin-1)
        raise HTTPException(400, "bad", headers={"x-note": "\u20ac"})

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


def test_an_error_quoting_a_lone_surrogate_is_still_answered() -> None:
    """Issue 29: the error handler failed on its own message (UTF-8 cannot encode a lone surrogate); the
    text is escaped instead, and the status and shape are kept."""
    r = _app_with_failing_routes().get("/surrogate")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["message"] == "no file named 'f\\ud800'" and err["param"] == "metadata.k\\udc80", err


def test_an_error_that_cannot_be_rendered_is_a_well_formed_500() -> None:
    """Building an error answer never raises (a raise there left the server's plain-text 500)."""
    request = Request(
        {"type": "http", "method": "GET", "path": "/", "headers": [], "state": {"request_id": "r1"}}
    )
    direct = error_response(
        request, 400, "bad", type_="invalid_request_error", param=None, code="x", headers={"x-note": "\u20ac"}
    )
    assert direct.status_code == 500 and direct.headers["x-request-id"] == "r1"
    assert json.loads(bytes(direct.body))["error"]["code"] == "internal_error"
    r = _app_with_failing_routes().get("/unsendable")
    assert r.status_code == 500
    err = r.json()["error"]
    assert err == {"message": err["message"], "type": "server_error", "param": None, "code": "internal_error"}
    assert r.headers["x-request-id"].startswith("req_")
