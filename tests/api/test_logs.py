"""Issue 14: the API's logs are JSON lines, and a response's ``x-request-id`` leads to its log lines, which
name the organization (a real ``tunegate api`` process, its output captured)."""

from __future__ import annotations

import io
import json
import logging
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from models.db import session_scope
from models.keys import authenticate
from tests.api.conftest import new_key
from tests.api.server import Server, uvicorn_process, wait_for


def _lines(text: str) -> list[dict[str, Any]]:
    """Every line of the output, parsed (a line that is not a JSON object fails the test)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            out.append(parsed)
    return out


def test_a_responses_request_id_is_found_in_json_log_lines_with_the_org_id(server: Server) -> None:
    key = new_key()
    with session_scope() as session:
        org_id = authenticate(session, key).id
    with uvicorn_process(server.home, {"TUNEGATE_LOG_LEVEL": "INFO"}, cli=True) as (_, base):
        log_file = next(server.home.glob(f"api-{base.rsplit(':', 1)[1]}.log"))
        auth = {"authorization": f"Bearer {key}"}
        missing = httpx.get(f"{base}/v1/files/file-{secrets.token_hex(6)}", headers=auth)
        assert missing.status_code == 404
        request_id = missing.headers["x-request-id"]

        def logged() -> bool:
            return request_id in log_file.read_text()

        wait_for(logged, "the request's log line")
    lines = _lines(log_file.read_text())  # uvicorn's own lines included: every line is JSON
    mine = [line for line in lines if line.get("request_id") == request_id]
    access = next(line for line in mine if line["event"] == "request")  # the line every request ends with
    assert access["org_id"] == org_id and access["status"] == 404 and access["method"] == "GET"
    assert any(line.get("logger", "").startswith("uvicorn") for line in lines)


def test_unhandled_errors_are_logged_with_their_own_request_id(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29 §6: the lines logging an unhandled error carried another request's request_id (the previous
    request on the same keep-alive connection, whose context asyncio had copied into the connection's
    reader) or none. Clients in parallel, each sending a good request and then a failing one on one
    connection, to sync and async routes: every line about an error carries the id its response names."""
    import api.main
    from tests.api.server import run_server
    from tunegate import logs
    from tunegate.settings import get_settings, reset_settings

    make_app = api.main.create_app

    def app_with_failing_routes() -> FastAPI:
        app = make_app()

        @app.get("/boom")
        def boom() -> None:
            raise RuntimeError("a bug in a sync route")

        @app.get("/boom-async")
        async def boom_async() -> None:
            raise RuntimeError("a bug in an async route")

        return app

    monkeypatch.setattr(api.main, "create_app", app_with_failing_routes)
    monkeypatch.setenv("TUNEGATE_LOG_LEVEL", "INFO")
    reset_settings()
    out = io.StringIO()

    def good_then_failing(i: int) -> tuple[str, str]:
        with httpx.Client(base_url=base, timeout=30) as http:  # both on one keep-alive connection
            good = http.get("/healthz")
            bad = http.get("/boom" if i % 2 else "/boom-async")
        assert good.status_code == 200
        assert bad.status_code == 500 and bad.json()["error"]["code"] == "internal_error"
        return good.headers["x-request-id"], bad.headers["x-request-id"]

    uvicorn_logger = logging.getLogger("uvicorn")
    try:
        with run_server() as base:
            logs.configure(get_settings(), stream=out)
            monkeypatch.setattr(uvicorn_logger, "handlers", [])  # as `tunegate api` runs it: through ours
            monkeypatch.setattr(uvicorn_logger, "propagate", True)
            with ThreadPoolExecutor(4) as pool:
                pairs = list(pool.map(good_then_failing, range(16)))
    finally:
        logs.configure(get_settings())
    failed = sorted(bad for _, bad in pairs)
    lines = _lines(out.getvalue())
    errors = [line for line in lines if "RuntimeError" in line.get("exception", "")]
    by_us = [line for line in errors if line.get("logger") == "api.core.errors"]
    assert sorted(str(line.get("request_id")) for line in by_us) == failed
    by_uvicorn = [line for line in errors if line.get("logger", "").startswith("uvicorn")]
    assert sorted(str(line.get("request_id")) for line in by_uvicorn) == failed
    answered = {line.get("request_id"): line["status"] for line in lines if line["event"] == "request"}
    assert answered == {rid: code for pair in pairs for rid, code in zip(pair, (200, 500), strict=True)}
