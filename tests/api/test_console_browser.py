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
