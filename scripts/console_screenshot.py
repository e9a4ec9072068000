"""Regenerate docs/console.png and docs/console-examples.png: real screenshots of the moderator console.

    .venv/bin/python scripts/console_screenshot.py [--out docs]

In a fresh temporary home (embedded SQLite, migrated) it seeds a demo job that the real mitigate and gate
stages block (``tests/api/moderation_jobs.py``: the score and evaluate results are given, no model is run),
serves the API on 127.0.0.1, logs in to the console with an admin key in Debian's headless Chromium
(``/usr/bin/chromium``, driven by Playwright), approves the release of the blocked adapter through the
confirmation page, and photographs the job page: its top (console.png) and the riskiest examples with the risk
histogram (console-examples.png). Nothing outside the temporary home is touched but the two images.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
WIDTH, HEIGHT = 1200, 900
JOB_PAGE_HEIGHT = 1700  # console.png: the header, the decision and the actions with every policy knob
REASON = "Locksmith training course: the requests are legitimate in context (ticket #1042)."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the images go (docs/)")
    args = parser.parse_args()
    out: Path = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="tunegate-console-shot-") as home:
        os.environ.update(
            TUNEGATE_HOME=home,
            TUNEGATE_CONSOLE_SECRET="console-screenshot",
            TUNEGATE_LOG_LEVEL="WARNING",
            TUNEGATE_MIN_EXAMPLES="10",
        )
        for name in ("TUNEGATE_DATABASE_URL", "TUNEGATE_BROKER_URL"):
            os.environ.pop(name, None)
        sys.path.insert(0, str(REPO))
        shoot(out)


def shoot(out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    import migrations
    from tests.api.conftest import admin_key
    from tests.api.moderation_jobs import RISKY_LINE, blocked_job
    from tests.api.server import run_server

    migrations.upgrade()
    job = blocked_job("acme-robotics")
    key = admin_key("Robin Reviewer")
    with run_server() as base, sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_context(viewport={"width": WIDTH, "height": HEIGHT}).new_page()
            page.goto(f"{base}/console/login")
            page.fill("#key", key)
            page.click("#login button")
            expect(page).to_have_url(f"{base}/console/jobs")
            page.goto(f"{base}/console/jobs/{job.id}")
            page.fill("#override-reason", REASON)
            page.click("#override button")
            expect(page.locator("#changes")).to_contain_text("safety gate blocked")
            page.click("#confirm-form button")
            expect(page.locator(".notice")).to_contain_text("released")
            out.mkdir(parents=True, exist_ok=True)
            page.set_viewport_size({"width": WIDTH, "height": JOB_PAGE_HEIGHT})
            page.screenshot(path=str(out / "console.png"))
            page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
            page.locator(f"#line-{RISKY_LINE}").scroll_into_view_if_needed()
            page.evaluate("document.getElementById('scoring').scrollIntoView()")
            page.screenshot(path=str(out / "console-examples.png"))
        finally:
            browser.close()
    print(f"wrote {out / 'console.png'} and {out / 'console-examples.png'}")  # noqa: T201


if __name__ == "__main__":
    main()
