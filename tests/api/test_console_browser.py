"""The moderator console in a real browser (Playwright driving Debian's Chromium, /usr/bin/chromium).

Logs in, filters the queue, opens a blocked job, reads a flagged example's full text, overrides with a reason,
sees the audit entry, downloads the adapter through the API; an org key is refused. A screenshot of the job
page is saved under tests/artifacts/.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import admin_key, sdk
from tests.api.moderation_jobs import RISKY_LINE, blocked_job
from tests.api.server import Server

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="Debian's chromium is not installed (scripts/setup installs it as root)"
    ),
    # one backend is enough for the browser: the HTTP tests cover both
    pytest.mark.parametrize("server", ["sqlite"], indirect=True),
]


@pytest.fixture
def page(console_env: None) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


def test_moderator_overrides_a_blocked_job_in_the_browser(server: Server, page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    job = blocked_job()
    other = blocked_job()
    page.goto(f"{server.base_url}/console")
    expect(page).to_have_url(f"{server.base_url}/console/login")
    page.fill("#key", admin_key("Robin Reviewer"))
    page.click("#login button")
    expect(page).to_have_url(f"{server.base_url}/console/jobs")

    page.select_option("select[name=org]", label=job.org)
    page.click("#filters button")
    queue = page.locator("#queue")
    expect(queue).to_contain_text(job.id)
    expect(queue).not_to_contain_text(other.id)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-queue.png"))
    page.click(f"text={job.id}")
    expect(page.locator("h1")).to_contain_text(job.id)
    expect(page.locator("#decision")).to_contain_text("safety_eval_failed")

    example = page.locator(f"#line-{RISKY_LINE}")
    full = example.locator("details .text").first
    expect(full).to_be_hidden()
    example.locator("summary").first.click()
    expect(full).to_have_text(job.risky_text)
    expect(example).to_contain_text("down-weighted")

    page.fill("#override-reason", "Locksmith training course; the requests are legitimate in context.")
    page.click("#override button")
    expect(page.locator("#changes")).to_contain_text(f"release the adapter of {job.id}")
    page.click("#confirm-form button")
    expect(page.locator(".notice")).to_contain_text("released")
    audit = page.locator("#audit")
    expect(audit).to_contain_text("Robin Reviewer")
    expect(audit).to_contain_text("Locksmith training course")
    page.screenshot(path=str(ARTIFACTS / "console-job.png"), full_page=True)
    page.screenshot(path=str(ARTIFACTS / "console-job-top.png"))
    page.evaluate("document.getElementById('scoring').scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "console-job-examples.png"))

    raw = sdk(server, job.key).get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        assert f"{job.id}-adapter/adapter_config.json" in tar.getnames()


def test_an_org_key_is_refused_in_the_browser(server: Server, page: object) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    job = blocked_job()
    page.goto(f"{server.base_url}/console/login")
    page.fill("#key", job.key)
    with page.expect_response(f"{server.base_url}/console/login") as answer:
        page.click("#login button")
    assert answer.value.status == 403
    expect(page.locator(".error")).to_contain_text("admin key is required")
    page.goto(f"{server.base_url}/console/jobs/{job.id}")
    expect(page).to_have_url(f"{server.base_url}/console/login")
    expect(page.locator("body")).not_to_contain_text(job.risky_text)


# --- issue 28 -----------------------------------------------------------------------------------------------


def _boxes(page: object, selector: str) -> list[tuple[str, float, float, float, float]]:
    """The rendered boxes (x0, y0, x1, y1) of the elements under ``selector``, as Chromium lays them out."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    found: list[list[Any]] = page.eval_on_selector_all(
        selector,
        """els => els.map(e => { const r = e.getBoundingClientRect();
            return [e.tagName + ':' + (e.textContent || ''), r.left, r.top, r.right, r.bottom]; })""",
    )
    return [(str(t), float(a), float(b), float(c), float(d)) for t, a, b, c, d in found]


def _overlap(a: tuple[str, float, float, float, float], b: tuple[str, float, float, float, float]) -> bool:
    return a[1] < b[3] and b[1] < a[3] and a[2] < b[4] and b[2] < a[4]


def test_queue_filter_decision_first_and_only_possible_actions_in_the_browser(
    server: Server, page: object
) -> None:
    from playwright.sync_api import Page, expect

    from models.jobs import JobStatus
    from tests.api.test_console_review import ended_job

    assert isinstance(page, Page)
    job = blocked_job()
    failed = ended_job(job.org, JobStatus.FAILED, "training_failed")
    cancelled = ended_job(job.org, JobStatus.CANCELLED)
    page.goto(f"{server.base_url}/console/login")
    page.fill("#key", admin_key("Robin Reviewer"))
    page.click("#login button")

    queue = page.locator("#queue")
    page.select_option("select[name=org]", label=job.org)
    page.click("#filters button")
    for shown in (job.id, failed, cancelled):
        expect(queue).to_contain_text(shown)
    page.select_option("select[name=status]", "cancelled")
    page.click("#filters button")
    expect(queue).to_contain_text(cancelled)
    expect(queue).not_to_contain_text(failed)
    expect(queue).not_to_contain_text(job.id)
    page.select_option("select[name=status]", "failed")
    page.click("#filters button")
    expect(queue).to_contain_text(failed)
    expect(queue).not_to_contain_text(cancelled)

    page.click(f"text={failed}")  # failed before any report: the decision first, nothing to act on
    expect(page.locator("#report-header")).to_contain_text(job.org)
    expect(page.locator("h2").first).to_have_text("Decision")
    expect(page.locator("#decision")).to_contain_text("Failed: training_failed")
    for absent in ("#override", "#revoke", "#download-report"):
        expect(page.locator(absent)).to_have_count(0)

    page.goto(f"{server.base_url}/console/jobs/{job.id}")
    header, decision, actions = (
        page.locator(s).bounding_box() for s in ("#report-header", "#decision", "#actions")
    )
    assert header and decision and actions and header["y"] < decision["y"] < actions["y"]
    expect(page.locator("#override")).to_be_visible()
    expect(page.locator("#download-report")).to_be_visible()
    expect(page.locator("#revoke")).to_have_count(0)

    # the risk histogram as Chromium draws it: no label overlaps another label, a bar or a threshold line
    labels = _boxes(page, "#scoring svg text")
    shapes = [
        b for b in _boxes(page, "#scoring svg rect, #scoring svg line[stroke-dasharray]") if b[4] > b[2]
    ]
    svg = _boxes(page, "#scoring svg")[0]
    assert len(labels) >= 7
    for i, label in enumerate(labels):
        assert svg[1] <= label[1] and label[3] <= svg[3] and svg[2] <= label[2] and label[4] <= svg[4], label
        for other in labels[i + 1 :] + shapes:
            assert not _overlap(label, other), (label, other)
    ARTIFACTS.mkdir(exist_ok=True)
    page.evaluate("document.getElementById('scoring').scrollIntoView()")
    page.screenshot(path=str(ARTIFACTS / "console-histogram.png"))


def test_loosening_asks_to_confirm_the_change_and_the_audit_page_filters_in_the_browser(
    server: Server, page: object
) -> None:
    from playwright.sync_api import Page, expect

    assert isinstance(page, Page)
    from models.db import session_scope
    from models.keys import Admin
    from models.moderation import set_org_policy
    from models.tables import Organization
    from tunegate.settings import get_settings

    job = blocked_job()
    other = blocked_job()
    with session_scope() as s:  # another organization's entry, which the filter leaves out
        org = s.query(Organization).filter_by(name=other.org).one()
        set_org_policy(
            s, Admin("key-x", "Sam"), org, {"mitigation": "drop"}, "other org tightened", get_settings()
        )
    page.goto(f"{server.base_url}/console/login")
    page.fill("#key", admin_key("Robin Reviewer"))
    page.click("#login button")
    page.goto(f"{server.base_url}/console/jobs/{job.id}")

    page.fill("#policy input[name=gate_delta]", "0.1")
    page.fill("#policy-reason", "pilot")
    page.click("#policy button")
    expect(page.locator("#changes")).to_have_text("gate_delta 0.05 → 0.10 (looser)")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "console-confirm.png"))
    confirm_url = page.url
    page.fill("#confirm-reason", "pilot, see ticket")  # 17 characters: the browser keeps the form
    page.click("#confirm-form button")
    expect(page.locator("#confirm-reason:invalid")).to_have_count(1)
    assert page.url == confirm_url
    page.fill("#confirm-reason", "Pilot agreed with the customer's legal team, ticket #1042.")
    page.click("#confirm-form button")
    expect(page.locator(".notice")).to_contain_text("policy is changed")
    expect(page.locator("#actions")).to_contain_text("gate_delta 0.05 → 0.10 (looser)")

    page.fill("#override-reason", "ok")  # too short for an override: the browser says so, nothing is sent
    page.click("#override button")
    expect(page.locator("#override-reason:invalid")).to_have_count(1)
    page.fill("#override-reason", "Locksmith training course; the requests are legitimate in context.")
    page.click("#override button")
    expect(page.locator("#changes")).to_contain_text("that the safety gate blocked (safety_eval_failed)")
    page.click("#confirm-form button")
    expect(page.locator(".notice")).to_contain_text("released")

    page.click("nav >> text=Audit log")
    log = page.locator("#audit-log")
    expect(log).to_contain_text("other org tightened")
    page.select_option("#audit-filters select[name=org]", label=job.org)
    page.click("#audit-filters button")
    expect(log).to_contain_text("gate_delta 0.05 → 0.10 (looser)")
    expect(log).to_contain_text("released the adapter the safety gate blocked")
    expect(log).not_to_contain_text("other org tightened")
    page.select_option("#audit-filters select[name=action]", "override_release")
    page.click("#audit-filters button")
    expect(log).to_contain_text("Locksmith training course")
    expect(log).not_to_contain_text("gate_delta")
    page.screenshot(path=str(ARTIFACTS / "console-audit.png"))
