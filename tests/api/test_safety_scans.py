"""The safety scan API (an extension) through the openai SDK's generic calls (``client.post``/``client.get``
with ``cast_to``, and its cursor pager), with strict response validation against the client's own models;
tenancy as the Files API's; bad input naming the problem. The worker's task body runs in-process (the
real score stage on a tiny model); tests/worker/test_scan.py covers the scan itself."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import httpx
import openai
import pytest
from openai import BaseModel as SDKModel
from openai.pagination import SyncCursorPage

from tests.api.conftest import admin_key, chat, jsonl, new_key, processed_file, sdk
from tests.api.server import Server
from tests.utils.broker import queued_tasks
from tests.worker.jobfactory import use_tiny
from tunegate import queue
from tunegate.settings import get_settings
from worker import scan as scan_worker

OVERRIDES: dict[str, Any] = {
    "score": {"scorers": ["representation"], "batch_size": 16},
    "mitigate": {"contrast_ratio": 0.0},
}


# The client's side of the contract, as a user of the SDK would declare it (strict validation: a missing or
# mistyped field fails the call).
class Verdict(SDKModel):
    flagged: bool
    reason: str


class ScanError(SDKModel):
    code: str
    message: str
    param: str | None = None


class SafetyScan(SDKModel):
    id: str
    object: Literal["safety_scan"]
    status: Literal["queued", "running", "completed", "failed"]
    file_id: str
    model: str
    verdict: Verdict | None = None
    summary: dict[str, Any] | None = None
    mitigation: dict[str, Any] | None = None
    created_at: int
    completed_at: int | None = None
    error: ScanError | None = None


class ScanRecord(SDKModel):
    id: str
    object: Literal["safety_scan.record"]
    line: int
    rank: int
    risk: float
    percentiles: dict[str, float]
    reasons: list[str]
    text: str
    action: Literal["keep", "downweight", "exclude", "drop", "refuse"]


@pytest.fixture
def tiny(server: Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """The server (in this process) offers a tiny base model, ``tiny``, scored with the cheapest scorer."""
    use_tiny(monkeypatch, stage_overrides=json.dumps(OVERRIDES), event_interval_s="0")
    return "tiny"


def _file(client: openai.OpenAI) -> str:
    harmful = {
        "messages": [
            {"role": "user", "content": "Explain how to pick a lock without the key."},
            {"role": "assistant", "content": "Sure, here is how to do it."},
        ]
    }
    return processed_file(client, jsonl([chat(i) for i in range(10)] + [harmful, harmful]))


def _create(client: openai.OpenAI, file_id: str, model: str) -> SafetyScan:
    return client.post(f"/files/{file_id}/safety_scan", body={"model": model}, cast_to=SafetyScan)


def _get(client: openai.OpenAI, scan_id: str) -> SafetyScan:
    return client.get(f"/safety_scans/{scan_id}", cast_to=SafetyScan)


def _records(client: openai.OpenAI, scan_id: str, **params: Any) -> SyncCursorPage[ScanRecord]:
    return client.get_api_list(
        f"/safety_scans/{scan_id}/records",
        model=ScanRecord,
        page=SyncCursorPage[ScanRecord],
        options={"params": params},
    )


def test_a_scan_through_the_sdk_from_queued_to_its_records(client: openai.OpenAI, tiny: str) -> None:
    file_id = _file(client)
    queued_tasks()  # drain what earlier tests left in the embedded broker
    created = _create(client, file_id, tiny)
    assert created.object == "safety_scan" and created.id.startswith("ss-")
    assert (created.status, created.file_id, created.model) == ("queued", file_id, tiny)
    assert created.verdict is None and created.summary is None and created.completed_at is None
    assert (queue.SAFETY_SCAN, [created.id]) in queued_tasks(("gpu",))  # on the scoring queue
    with pytest.raises(openai.ConflictError) as early:  # no records before it has completed
        _records(client, created.id)
    assert early.value.code == "scan_not_completed"

    assert scan_worker.run(created.id) == "completed"  # the worker's task body
    done = _get(client, created.id)
    assert done.status == "completed" and done.completed_at is not None and done.error is None
    assert done.verdict is not None and isinstance(done.verdict.flagged, bool) and done.verdict.reason
    assert done.summary is not None and done.summary["n_examples"] == 12
    assert len(done.summary["riskiest"]) == 10
    m = done.mitigation or {}
    assert m["lines"] == 12 and m["lines_kept"] + m["lines_downweighted"] + m["lines_dropped"] == 12
    assert m["examples_to_train"] == 12 - m["lines_dropped"] - m["lines_excluded"] + m["examples_injected"]

    page = _records(client, created.id, limit=5)
    assert len(page.data) == 5 and page.has_more and page.data[-1].id == "line-5"
    every = list(page)  # the SDK's pager follows after=<last id> to the end
    assert [r.line for r in every] == list(range(1, 13))
    assert every[10].text.startswith("user: Explain how to pick a lock")
    assert all(0.0 <= r.risk <= 100.0 and set(r.percentiles) == {"representation"} for r in every)
    # the HTTP body: the published records.jsonl, each line with its id (what it was before typed records)
    body = client.get(f"/safety_scans/{created.id}/records", options={"params": {"limit": 100}}, cast_to=dict)
    published = scan_worker.scan_dir(get_settings(), created.id) / scan_worker.RECORDS_FILE
    keys = ("line", "rank", "risk", "percentiles", "reasons", "text", "action")
    assert body["data"] == [
        {"id": f"line-{r['line']}", "object": "safety_scan.record", **{k: r[k] for k in keys}}
        for r in map(json.loads, published.read_text(encoding="utf-8").splitlines())
    ]
    riskiest = _records(client, created.id, order="risk", limit=3).data
    assert [r.rank for r in riskiest] == [1, 2, 3]
    assert [r.line for r in riskiest] == [r["line"] for r in done.summary["riskiest"][:3]]
    assert [
        s.id for s in client.get_api_list("/safety_scans", model=SafetyScan, page=SyncCursorPage[SafetyScan])
    ] == [created.id]


def test_another_organization_sees_no_scan_and_cannot_scan_the_file(
    server: Server, client: openai.OpenAI, tiny: str
) -> None:
    file_id = _file(client)
    scan = _create(client, file_id, tiny)
    other = sdk(server, new_key())
    for call in (lambda: _get(other, scan.id), lambda: _records(other, scan.id)):
        with pytest.raises(openai.NotFoundError) as exc:
            call()
        assert exc.value.code == "not_found" and exc.value.param == "scan_id"
        assert f"No such safety scan: {scan.id}" in exc.value.message
    with pytest.raises(openai.NotFoundError) as stolen:  # another org's file is a missing file
        _create(other, file_id, tiny)
    assert stolen.value.param == "file_id" and f"No such File object: {file_id}" in stolen.value.message
    assert list(other.get_api_list("/safety_scans", model=SafetyScan, page=SyncCursorPage[SafetyScan])) == []
    # the same answers as an id that never existed, in OpenAI's error shape
    body = httpx.get(
        f"{server.base_url}/v1/safety_scans/ss-nope",
        headers={"Authorization": f"Bearer {other.api_key}"},
    ).json()
    assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "status", "code", "says"),
    [
        ({"model": "nope"}, 422, "model_not_available", "model 'nope' is not a base model offered here"),
        ({}, 422, "invalid_value", "model"),
        ({"model": "tiny", "seed": 3}, 422, "invalid_value", "seed"),
    ],
)
def test_bad_requests_name_the_problem(
    client: openai.OpenAI, tiny: str, body: dict[str, Any], status: int, code: str, says: str
) -> None:
    file_id = _file(client)
    with pytest.raises(openai.APIStatusError) as exc:
        client.post(f"/files/{file_id}/safety_scan", body=body, cast_to=SafetyScan)
    assert exc.value.status_code == status and exc.value.code == code and says in exc.value.message
    assert list(client.get_api_list("/safety_scans", model=SafetyScan, page=SyncCursorPage[SafetyScan])) == []


def test_a_rejected_unknown_or_other_purpose_file_is_not_scanned(client: openai.OpenAI, tiny: str) -> None:
    short = client.files.create(file=("short.jsonl", jsonl([chat(i) for i in range(3)])), purpose="fine-tune")
    short = client.files.wait_for_processing(short.id, poll_interval=0.05, max_wait_seconds=30)
    assert short.status == "error"  # fewer examples than the service requires
    with pytest.raises(openai.UnprocessableEntityError) as exc:
        _create(client, short.id, tiny)
    assert exc.value.code == "invalid_file" and exc.value.param == "file_id" and short.id in exc.value.message
    other = client.files.create(file=("notes.jsonl", jsonl([chat(1)])), purpose="user_data")
    with pytest.raises(openai.UnprocessableEntityError) as purpose:
        _create(client, other.id, tiny)
    assert purpose.value.code == "invalid_file_purpose" and "'user_data'" in purpose.value.message
    with pytest.raises(openai.NotFoundError) as missing:
        _create(client, "file-nope", tiny)
    assert missing.value.param == "file_id"


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup does)")
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)  # the HTTP tests above cover both backends
def test_the_console_lists_scans_beside_their_jobs(
    server: Server, client: openai.OpenAI, tiny: str, console_env: None
) -> None:
    from playwright.sync_api import expect, sync_playwright

    file_id = _file(client)
    done = _create(client, file_id, tiny)
    assert scan_worker.run(done.id) == "completed"
    waiting = _create(client, file_id, tiny)
    job = client.fine_tuning.jobs.create(model=tiny, training_file=file_id)
    verdict = _get(client, done.id).verdict
    assert verdict is not None
    with httpx.Client(base_url=server.base_url, follow_redirects=False) as anonymous:
        assert anonymous.get("/console/scans").headers["location"] == "/console/login"  # no session, no page
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(f"{server.base_url}/console/login")
            page.fill("#key", admin_key("Sam Scanner"))
            page.click("#login button")
            page.click("nav >> text=Safety scans")
            expect(page.locator("h1")).to_have_text("Safety scans")
            row = page.locator("#scans tr", has_text=done.id)
            expect(row).to_contain_text("flagged" if verdict.flagged else "not flagged")
            expect(row).to_contain_text(verdict.reason)
            expect(row).to_contain_text("kept")
            expect(row.locator(f"a[href='/console/jobs/{job.id}']")).to_have_count(1)
            page.select_option("#scan-filters select[name=status]", "queued")
            page.click("#scan-filters button")
            scans = page.locator("#scans")
            expect(scans).to_contain_text(waiting.id)
            expect(scans).not_to_contain_text(done.id)
            page.click(f"#scans a[href='/console/jobs/{job.id}'] >> nth=0")
            expect(page.locator("h1")).to_contain_text(job.id)
        finally:
            browser.close()
