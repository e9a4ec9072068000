"""Lone UTF-16 surrogates (issue 29, section 2). JSON lets ``\\ud800`` through as a valid escape, and the
decoded text cannot be encoded as UTF-8. In a training line the file uploaded with 200 and then stayed
``uploaded`` forever; in job metadata or ``safety`` keys, create answered 500 but stored the job, and from
then on list, retrieve and cancel answered 500 for that organization.

Every request here is sent as raw bytes (``json.dumps`` writes a lone surrogate as the six characters
``\\ud800``, exactly what a hostile client sends) to a real server, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from tests.api.conftest import admin_key, chat, good_file, jsonl, new_key, processed_file, sdk
from tests.api.server import Server

HIGH, LOW = "\ud800", "\udc80"


def _raw(body: Any) -> bytes:
    """``body`` as JSON whose lone surrogates are raw ``\\ud800`` escapes (json.dumps's ASCII output)."""
    return json.dumps(body).encode("ascii")


def _raw_utf8(body: Any) -> bytes:
    """``body`` as JSON, each lone surrogate as its raw 3 UTF-8 bytes (``json.loads`` of bytes takes them)."""
    return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")


# --- in a training line: refused at upload, naming the file, the line and the field ----------------------

_CALL = {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "\\ud800"}'}}
POISONED_LINES = {
    "content": (
        {"messages": [{"role": "user", "content": f"hi {HIGH}"}, {"role": "assistant", "content": "ok"}]},
        "messages[0].content",
    ),
    "low_surrogate": (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": LOW + "x"}]},
        "messages[1].content",
    ),
    "role": ({"messages": [{"role": HIGH, "content": "hi"}]}, "messages[0].role"),
    "key": ({"prompt": "p", "completion": "c", f"x{HIGH}": 1}, "x\\ud800"),
    "prompt_completion": ({"prompt": "p", "completion": f"{LOW}{HIGH}"}, "completion"),
    # the surrogate is escaped twice: a JSON string inside the line's JSON (OpenAI's tool-call arguments)
    "tool_call_arguments": (
        {
            "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "tool_calls": [_CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
                {"role": "assistant", "content": "18 C."},
            ]
        },
        "messages[1].tool_calls[0].function.arguments.city",
    ),
}


@pytest.mark.parametrize("case", sorted(POISONED_LINES))
def test_upload_refuses_a_lone_surrogate_naming_file_line_and_field(case: str, client: openai.OpenAI) -> None:
    row, field = POISONED_LINES[case]
    content = good_file(3) + _raw(row) + b"\n" + good_file(8)
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("poison.jsonl", content), purpose="fine-tune")
    body = info.value.body
    assert isinstance(body, dict) and body["code"] == "invalid_file", body
    message = body["message"]
    assert message.startswith(f"poison.jsonl, line 4, field '{field}': "), message
    assert "lone UTF-16 surrogate" in message
    assert client.files.list().data == []  # nothing stored


def test_a_valid_surrogate_pair_is_accepted(client: openai.OpenAI) -> None:
    """An escaped pair (``\\ud83d\\ude00``) is one character, not a lone surrogate."""
    rows = [chat(i) for i in range(11)] + [{"prompt": "smile", "completion": "\U0001f600"}]
    content = jsonl(rows)
    assert b"\\ud83d\\ude00" in content
    processed_file(client, content)


# --- in what the API stores: 400 at the edge, naming the field --------------------------------------------


def _headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


JOB_FIELDS: dict[str, tuple[dict[str, Any], str]] = {
    "metadata_value": ({"metadata": {"k": HIGH}}, "metadata.k"),
    "metadata_key": ({"metadata": {f"k{LOW}": "v"}}, "metadata.k\\udc80"),
    "safety_key": ({"safety": {HIGH: 0.1}}, "safety.\\ud800"),
    "safety_value": ({"safety": {"gate_delta": f"{HIGH}"}}, "safety.gate_delta"),
    "integrations": (
        {"integrations": [{"type": "wandb", "wandb": {"project": LOW}}]},
        "integrations[0].wandb.project",
    ),
    "suffix": ({"suffix": f"s{HIGH}"}, "suffix"),
    "method": ({"method": {"type": "supervised", "dpo": {HIGH: 1}}}, "method.dpo.\\ud800"),
}


@pytest.mark.parametrize("case", sorted(JOB_FIELDS))
def test_job_create_refuses_a_lone_surrogate_and_stores_nothing(case: str, server: Server) -> None:
    key = new_key()
    training_file = processed_file(sdk(server, key))
    extra, param = JOB_FIELDS[case]
    body = {"model": "smollm2-135m", "training_file": training_file, **extra}
    for raw in (_raw(body), _raw_utf8(body)):
        r = httpx.post(
            f"{server.base_url}/v1/fine_tuning/jobs", content=raw, headers=_headers(key), timeout=30
        )
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["code"] == "invalid_unicode" and err["param"] == param, err
        assert err["message"].startswith(f"{param}: ") and "lone UTF-16 surrogate" in err["message"]
    listed = httpx.get(f"{server.base_url}/v1/fine_tuning/jobs", headers=_headers(key), timeout=30)
    assert listed.status_code == 200 and listed.json()["data"] == []


def test_a_job_stored_with_lone_surrogates_still_lists_retrieves_and_cancels(server: Server) -> None:
    """A job the old code stored (metadata and safety with lone surrogates) no longer locks its organization
    out of list, retrieve and cancel: the text is shown with U+FFFD in its place."""
    from models.db import session_scope
    from models.keys import create_key
    from models.tables import Job

    with session_scope() as s:
        new = create_key(s, f"org-poisoned-{server.backend}-{id(s)}")
        job = Job(
            org_id=new.org_id,
            model="smollm2-135m",
            training_file="file-x",
            status="queued",
            metadata_={"note": f"a{HIGH}b", f"k{LOW}": "v"},
            safety={f"{HIGH}": 0.1},
            method={"type": "supervised", "supervised": {"hyperparameters": {}}},
        )
        s.add(job)
        s.flush()
        job_id = job.id
    base, headers = server.base_url, _headers(new.key)
    listed = httpx.get(f"{base}/v1/fine_tuning/jobs", headers=headers, timeout=30)
    assert listed.status_code == 200, listed.text
    [shown] = listed.json()["data"]
    assert shown["metadata"] == {"note": "a\ufffdb", "k\ufffd": "v"} and shown["safety"] == {"\ufffd": 0.1}
    retrieved = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}", headers=headers, timeout=30)
    assert retrieved.status_code == 200 and retrieved.json()["metadata"] == shown["metadata"]
    cancelled = httpx.post(f"{base}/v1/fine_tuning/jobs/{job_id}/cancel", headers=headers, timeout=30)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
    events = httpx.get(f"{base}/v1/fine_tuning/jobs/{job_id}/events", headers=headers, timeout=30)
    assert events.status_code == 200, events.text


# --- every route of the app, every way a string gets in ----------------------------------------------------


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif hasattr(route, "original_router"):  # an included router (FastAPI keeps it as one entry)
            yield from _routes(route.original_router.routes)
        elif hasattr(route, "routes"):
            yield from _routes(route.routes)


def _poisoned_values() -> list[Any]:
    return [f"x{HIGH}", {f"k{LOW}": "v"}, {"k": [HIGH]}, [LOW, "ok"]]


def _json_bodies(route: APIRoute, valid: dict[str, Any]) -> Iterator[bytes]:
    """The route's valid body with each field in turn (and once all at once) holding a lone surrogate in a
    string, a key and a list item; as raw escapes and as raw UTF-8 bytes."""
    params = route.dependant.body_params
    model = params[0].field_info.annotation if len(params) == 1 else None
    fields = list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []
    fields = fields or [p.name for p in params] or ["x"]
    for name in fields:
        for bad in _poisoned_values():
            yield _raw({**valid, name: bad})
    yield _raw_utf8({**valid, **dict.fromkeys(fields, HIGH)})
    yield _raw({f"{HIGH}": 1, **valid})


def _form_bodies(route: APIRoute) -> Iterator[tuple[bytes, str]]:
    """Form fields with a lone surrogate: url-encoded (percent-decoding replaces it) and multipart whose
    declared charset (``unicode_escape``) decodes ``\\ud800`` into one."""
    names = [p.alias for p in route.dependant.body_params] or ["x"]
    yield "&".join(f"{n}=%ED%A0%80" for n in names).encode(), "application/x-www-form-urlencoded"
    boundary = "surrogateboundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{n}"\r\n\r\nx\\ud800y\r\n'.encode()
        for n in names
    )
    yield (
        parts + f"--{boundary}--\r\n".encode(),
        f"multipart/form-data; charset=unicode_escape; boundary={boundary}",
    )


def _multipart_uploads(field: str) -> Iterator[tuple[bytes, str]]:
    """A file part whose name, form fields and content carry lone surrogates every way multipart allows."""
    boundary = "uploadboundary"
    poisoned = good_file(3) + _raw({"prompt": HIGH, "completion": "c"}) + b"\n" + good_file(8)
    for filename, charset in (
        (b"a\\ud800.jsonl", ""),
        (b"a\xed\xa0\x80.jsonl", "; charset=unicode_escape"),
        (b"a.jsonl\"; filename*=UTF-8''%ED%A0%80", ""),
    ):
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'.encode()
            + f'--{boundary}\r\nContent-Disposition: form-data; name="x\\ud800"\r\n\r\n\\udc80\r\n'.encode()
            + f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
            + filename
            + b'"\r\nContent-Type: application/jsonl\r\n\r\n'
            + poisoned
            + f"\r\n--{boundary}--\r\n".encode()
        )
        yield body, f"multipart/form-data; boundary={boundary}{charset}"


def _path(route: APIRoute, ids: dict[str, str], poison: bool) -> str:
    path = route.path_format
    for name in route.param_convertors:
        value = "x%ED%A0%80y%5Cud800" if poison else ids.get(name, "unknown")
        path = path.replace("{" + name + "}", value)
    return path


def _queries(route: APIRoute) -> Iterator[str]:
    """Each query parameter in turn (so the others stay valid), then all of them and a metadata filter, as
    percent-encoded surrogate bytes (decoded with replacement) and as the escape's six characters."""
    names = [q.alias for q in route.dependant.query_params]
    for name in names:
        yield f"?{name}=%ED%A0%80%5Cud800"
    yield "?" + "&".join(f"{n}=%ED%A0%80%5Cud800" for n in [*names, "metadata[k%ED%A0%80]", "x"])


def test_every_route_survives_lone_surrogates_and_the_account_stays_usable(
    server: Server, console_env: None
) -> None:
    """No 5xx from any route whatever carries a lone surrogate (path, query, header, JSON body, form body,
    multipart file name, field and content), every error is well-formed JSON, and afterwards the
    organization's list and retrieve calls still answer 200."""
    from api.main import create_app

    key = new_key(rate_limit_per_minute=1_000_000)
    client = sdk(server, key)
    training_file = processed_file(client)
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=training_file)
    upload = client.uploads.create(bytes=10, filename="u.jsonl", mime_type="text/jsonl", purpose="fine-tune")
    ids = {
        "file_id": training_file,
        "job_id": job.id,
        "upload_id": upload.id,
        "model_id": "smollm2-135m",
        "webhook_id": "wh-unknown",
        "checkpoint_id": "ckpt-unknown",
        "endpoint_id": "wh-unknown",
    }
    valid_bodies: dict[str, dict[str, Any]] = {
        "/v1/fine_tuning/jobs": {"model": "smollm2-135m", "training_file": training_file},
        "/v1/uploads": {
            "bytes": 10,
            "filename": "a.jsonl",
            "mime_type": "text/jsonl",
            "purpose": "fine-tune",
        },
        "/v1/uploads/{upload_id}/complete": {"part_ids": ["part-unknown"]},
        "/v1/webhooks": {"url": "https://example.com/hook", "events": ["fine_tuning.job.succeeded"]},
    }
    auth = {"/metrics": admin_key()}
    # what deletes or cancels the objects above goes last
    routes = sorted(
        _routes(create_app().routes),
        key=lambda r: ("DELETE" in (r.methods or ()) or r.path.endswith("/cancel"), r.path),
    )
    answers: list[tuple[str, str, int]] = []
    with httpx.Client(base_url=server.base_url, timeout=30) as http:

        def send(method: str, url: str, body: bytes | None = None, ctype: str | None = None) -> None:
            headers = [
                (b"authorization", f"Bearer {auth.get(url.split('?')[0], key)}".encode()),
                (b"idempotency-key", b"\xed\xa0\x80\\ud800"),  # Latin-1 to the server: no surrogate
                (b"x-custom", b"\\udc80\xed\xb2\x80"),
            ]
            if ctype:
                headers.append((b"content-type", ctype.encode()))
            r = http.request(method, url, content=body, headers=headers)
            answers.append((method, url, r.status_code))
            assert r.status_code < 500, (method, url, body and body[:300], r.status_code, r.text[:500])
            if r.headers.get("content-type", "").startswith("application/json"):
                r.json()  # well-formed

        for route in routes:
            for method in sorted((route.methods or set()) - {"HEAD", "OPTIONS"}):
                send(method, _path(route, ids, poison=True))
                url = _path(route, ids, poison=False)
                for query in _queries(route):
                    send(method, url + query)
                body_params = route.dependant.body_params
                if route.path in ("/v1/files", "/v1/uploads/{upload_id}/parts"):
                    field = "file" if route.path == "/v1/files" else "data"
                    for body, ctype in _multipart_uploads(field):
                        send(method, url, body, ctype)
                elif body_params and type(body_params[0].field_info).__name__ == "Form":
                    for body, ctype in _form_bodies(route):
                        send(method, url, body, ctype)
                elif body_params or method in ("POST", "PUT", "PATCH"):
                    for body in _json_bodies(route, valid_bodies.get(route.path, {})):
                        send(method, url, body, "application/json")
    assert len(answers) > 200, len(answers)  # every route was walked
    # the organization is not locked out: list and retrieve still answer, in valid JSON
    for path in ("/v1/fine_tuning/jobs", f"/v1/fine_tuning/jobs/{job.id}", "/v1/files", "/v1/webhooks"):
        r = httpx.get(f"{server.base_url}{path}", headers=_headers(key), timeout=30)
        assert r.status_code == 200, (path, r.text)
        r.json()
    assert client.fine_tuning.jobs.retrieve(job.id).metadata is None
    assert [j.id for j in client.fine_tuning.jobs.list()] == [job.id]  # no poisoned job was stored
