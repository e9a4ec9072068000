"""Issue 28: the report opens with a header naming the job, its organization, its model and the time, before
the decision; the copy the gate writes without the job's row says what it does not record."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from tests.tunegate.reporting.test_render import report, typed
from tunegate.reporting import render_report

JOB = {
    "id": "ftjob-abc123",
    "org": "acme-robotics",
    "model": "smollm2-135m",
    "status": "failed",
    "created_at": datetime(2026, 3, 4, 9, 30, tzinfo=UTC),
    "finished_at": datetime(2026, 3, 4, 10, 5, tzinfo=UTC),
    "events": [],
}


def _body(html: str) -> str:
    found = re.search(r"<body>(.*)</body>", html, flags=re.S)
    assert found, html[:500]
    return found.group(1).strip()


def test_the_report_opens_with_job_organization_model_and_time() -> None:
    html = render_report(typed(report()), job=JOB, generated_at=datetime(2026, 3, 5, 8, 0, tzinfo=UTC))
    body = _body(html)
    assert body.startswith('<header id="report-header">'), body[:300]
    header = body[: body.index("</header>")]
    for fact in (
        "ftjob-abc123",
        "acme-robotics",
        "smollm2-135m",
        "created 2026-03-04 09:30 UTC",
        "finished 2026-03-04 10:05 UTC",
        "this page 2026-03-05 08:00 UTC",
    ):
        assert fact in header, (fact, header)
    assert body.index("</header>") < body.index('id="decision"')  # the header, then the decision


def test_a_report_without_its_job_still_opens_with_a_header_saying_so() -> None:
    body = _body(render_report(typed(report())))
    assert body.startswith('<header id="report-header">')
    header = body[: body.index("</header>")]
    assert header.count("not recorded in this copy") == 3 and "this page 20" in header
    assert "Job details" not in body  # no empty details section
