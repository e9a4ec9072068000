"""Issue 14: the API's logs are JSON lines, and a response's ``x-request-id`` leads to its log lines, which
name the organization (a real ``tunegate api`` process, its output captured)."""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx

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
