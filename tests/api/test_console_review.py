"""Issue 28, the console, over HTTP against a real server: failed and cancelled jobs in the queue (with a job
status filter), the header and the decision first on a job's page, no action offered that cannot work (and the
server refusing it anyway), a confirmation naming the change and a 20-character reason before a safeguard is
loosened (override, policy), the policy form's fields from the knob table, the audit page, the report's
header."""

from __future__ import annotations

import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from markupsafe import escape

from models.db import session_scope
from models.jobs import JobStatus, transition
from models.keys import Admin, create_admin_key
from models.moderation import set_org_policy
from models.policy import KNOBS, harmful_categories
from models.tables import AuditEntry, Job, Organization
from tests.api.conftest import admin_key
from tests.api.moderation_jobs import MODEL, BlockedJob, blocked_job
from tests.api.server import Server
from tests.api.test_console import browser, confirm_of, csrf_of, login, override
from tests.models.knobs import throwaway_knob
from tests.worker.jobfactory import make_job
from tunegate.settings import get_settings

LONG_REASON = "Pilot agreed with the customer's legal team, ticket #1042."


@pytest.fixture
def staff(server: Server, console_env: None) -> Iterator[httpx.Client]:
    with browser(server) as client:
        assert login(client, admin_key()).status_code == 303
        yield client


def ended_job(org: str, status: JobStatus, code: str | None = None) -> str:
    """A job of ``org`` that ended (or stopped) before any report: failed with ``code``, cancelled or
    running."""
    job_id = make_job(MODEL, org=org)
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobStatus.QUEUED, message="queued")
        if status in (JobStatus.RUNNING, JobStatus.FAILED):
            transition(s, job, JobStatus.RUNNING, message="running", data={"stage": "train"})
        if status == JobStatus.FAILED:
            error = {"code": code or "training_failed", "message": "the trainer ran out of memory"}
            transition(s, job, status, message="failed", error=error)
        elif status == JobStatus.CANCELLED:
            transition(s, job, status, message="cancelled by the user")
    return job_id


def org_id_of(name: str) -> str:
    with session_scope() as s:
        org = s.query(Organization).filter_by(name=name).one()
        return org.id


def ids_in(page: str) -> set[str]:
    return set(re.findall(r'href="/console/jobs/(ftjob-[0-9a-f]+)"', page))


# --- the queue ----------------------------------------------------------------------------------------------


def test_the_queue_shows_failed_and_cancelled_jobs_with_a_status_filter(staff: httpx.Client) -> None:
    org = f"org-{secrets.token_hex(4)}"
    failed = ended_job(org, JobStatus.FAILED)
    cancelled = ended_job(org, JobStatus.CANCELLED)
    running = ended_job(org, JobStatus.RUNNING)
    blocked = blocked_job(org).id
    org_id = org_id_of(org)

    page = staff.get("/console/jobs", params={"org": org_id})
    assert page.status_code == 200
    assert ids_in(page.text) == {failed, cancelled, blocked}  # a running job needs no look yet
    assert "training_failed" in page.text and "cancelled" in page.text
    for status, expected in (
        ("failed", {failed, blocked}),
        ("cancelled", {cancelled}),
        ("running", {running}),  # a status picked: every job of it
        ("succeeded", set()),
    ):
        shown = staff.get("/console/jobs", params={"org": org_id, "status": status})
        assert shown.status_code == 200 and ids_in(shown.text) == expected, status
    assert ids_in(staff.get("/console/jobs", params={"org": org_id, "state": "failed"}).text) == {failed}
    assert ids_in(staff.get("/console/jobs", params={"org": org_id, "state": "cancelled"}).text) == {
        cancelled
    }
    assert ids_in(staff.get("/console/jobs", params={"org": org_id, "code": "cancelled"}).text) == {cancelled}
    form = staff.get("/console/jobs").text
    assert '<select name="status">' in form and '<option value="cancelled"' in form
    bad = staff.get("/console/jobs", params={"status": "exploded"})
    assert bad.status_code == 400 and "status must be one of" in bad.text


# --- the job page: header, decision first, only possible actions --------------------------------------------


def _order(page: str, *markers: str) -> list[int]:
    found = [page.find(m) for m in markers]
    assert -1 not in found, dict(zip(markers, found, strict=True))
    return found


def test_the_job_page_opens_with_the_header_then_the_decision(staff: httpx.Client) -> None:
    job = blocked_job()
    page = staff.get(f"/console/jobs/{job.id}").text
    header, decision, actions, form = _order(
        page,
        '<header id="report-header">',
        '<section id="decision">',
        '<section id="actions"',
        "<form method",
    )
    assert page.index("</nav>") < header < decision < actions and decision < page.index('id="policy"')
    top = page[header : page.index("</header>")]
    assert job.id in top and job.org in top and MODEL in top and "this page 20" in top and "created 20" in top
    assert "safety_eval_failed" in page[decision:actions]
    failed = ended_job(f"org-{secrets.token_hex(4)}", JobStatus.FAILED, "training_failed")
    page = staff.get(f"/console/jobs/{failed}").text
    decision, actions = _order(page, '<section id="decision">', '<section id="actions"')
    assert (
        "Failed: training_failed" in page[decision:actions] and "ran out of memory" in page[decision:actions]
    )


def test_only_actions_that_can_work_are_offered(server: Server, staff: httpx.Client) -> None:
    job = blocked_job()
    url = f"/console/jobs/{job.id}"
    page = staff.get(url).text
    assert 'id="override"' in page and 'id="download-report"' in page and 'id="revoke"' not in page

    failed = ended_job(f"org-{secrets.token_hex(4)}", JobStatus.FAILED, "training_failed")
    cancelled = ended_job(f"org-{secrets.token_hex(4)}", JobStatus.CANCELLED)
    for other in (failed, cancelled):
        page = staff.get(f"/console/jobs/{other}").text
        assert "Approve the release" not in page and 'id="revoke"' not in page, other
        assert "Download report.html" not in page and f"/console/jobs/{other}/report.html" not in page
        assert staff.get(f"/console/jobs/{other}/report.html").status_code == 404  # the server agrees

    gone = blocked_job()  # blocked by the gate, but its trained adapter's files are gone
    with session_scope() as s:
        row = s.get(Job, gone.id)
        assert row is not None and row.adapter_path
        shutil.rmtree(Path(row.adapter_path))
    page = staff.get(f"/console/jobs/{gone.id}").text
    assert 'id="override"' not in page and "cannot be released" in page and "adapter files" in page
    csrf = csrf_of(page)
    refused = staff.post(f"/console/jobs/{gone.id}/override", data={"reason": LONG_REASON, "csrf": csrf})
    assert refused.status_code == 404 and "please confirm" not in refused.text
    with session_scope() as s:
        row = s.get(Job, gone.id)
        assert row is not None and row.status == "failed"

    assert override(staff, url, csrf_of(staff.get(url).text), LONG_REASON).status_code == 303
    page = staff.get(url).text
    assert 'id="override"' not in page and 'id="revoke"' in page  # released: revoke, not release


# --- loosening: a confirmation naming the change, a reason of 20 characters ---------------------------------


def _policy(org: str) -> dict[str, Any]:
    with session_scope() as s:
        row = s.query(Organization).filter_by(name=org).one()
        return dict(row.policy or {})


def _entries(org: str) -> list[AuditEntry]:
    with session_scope() as s:
        org_id = s.query(Organization).filter_by(name=org).one().id
        rows = s.query(AuditEntry).filter_by(org_id=org_id).order_by(AuditEntry.created_at).all()
        s.expunge_all()
        return rows


def test_loosening_the_policy_asks_to_confirm_the_named_change(
    staff: httpx.Client, blocked: BlockedJob
) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    form = {"gate_delta": "0.1", "mitigation": "drop", "csrf": csrf}
    asked = staff.post(f"{url}/policy", data={**form, "reason": "pilot"})
    assert asked.status_code == 200 and "please confirm" in asked.text
    changes = re.findall(r'<li class="confirm-change">([^<]+)</li>', asked.text)
    assert changes == ["mitigation downweight → drop (tighter)", "gate_delta 0.05 → 0.10 (looser)"]
    assert 'minlength="20"' in asked.text and _policy(blocked.org) == {} and _entries(blocked.org) == []
    token = confirm_of(asked.text)

    short = staff.post(f"{url}/policy", data={**form, "reason": "pilot, see ticket", "confirm": token})
    assert (
        short.status_code == 400 and "at least 20 characters" in short.text and "please confirm" in short.text
    )
    forged = staff.post(f"{url}/policy", data={**form, "reason": LONG_REASON, "confirm": "0" * 32})
    assert forged.status_code == 200 and "please confirm" in forged.text  # asked again, nothing changed
    other = staff.post(
        f"{url}/policy", data={**form, "gate_delta": "0.2", "reason": LONG_REASON, "confirm": token}
    )
    assert other.status_code == 200 and "gate_delta 0.05 → 0.20 (looser)" in other.text  # another change
    assert _policy(blocked.org) == {} and _entries(blocked.org) == []

    done = staff.post(f"{url}/policy", data={**form, "reason": LONG_REASON, "confirm": token})
    assert done.status_code == 303
    assert _policy(blocked.org) == {"gate_delta": 0.1, "mitigation": "drop"}
    (entry,) = _entries(blocked.org)
    assert entry.reason == LONG_REASON
    assert "gate_delta 0.05 → 0.10 (looser)" in staff.get(url).text  # the organization's changes, in words

    tighter = staff.post(f"{url}/policy", data={"gate_delta": "0.02", "reason": "tighten", "csrf": csrf})
    assert tighter.status_code == 303 and _policy(blocked.org)["gate_delta"] == 0.02  # no confirmation


def test_the_server_refuses_a_short_reason_to_loosen_whatever_the_form(
    staff: httpx.Client, blocked: BlockedJob
) -> None:
    """Without the browser's checks: the confirmation's token and a short reason still change nothing."""
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    token = confirm_of(staff.post(f"{url}/override", data={"reason": "", "csrf": csrf}).text)
    for reason in ("", "ok", "looks fine to me"):
        resp = staff.post(f"{url}/override", data={"reason": reason, "csrf": csrf, "confirm": token})
        assert resp.status_code == 400 and "at least 20 characters" in resp.text, reason
    with session_scope() as s:
        job = s.get(Job, blocked.id)
        assert job is not None and job.status == "failed" and not job.released
    assert _entries(blocked.org) == []


def test_an_override_asks_to_confirm_the_release_it_names(staff: httpx.Client, blocked: BlockedJob) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    asked = staff.post(f"{url}/override", data={"reason": "ok after review", "csrf": csrf})
    assert asked.status_code == 200 and "please confirm" in asked.text
    named = f"release the adapter of {blocked.id} that the safety gate blocked (safety_eval_failed)"
    assert named in asked.text and ">ok after review</textarea>" in asked.text  # the reason typed, kept
    with session_scope() as s:
        job = s.get(Job, blocked.id)
        assert job is not None and job.status == "failed"
    wrong = staff.post(f"{url}/override", data={"reason": LONG_REASON, "csrf": csrf, "confirm": "x"})
    assert wrong.status_code == 200 and "please confirm" in wrong.text
    done = staff.post(
        f"{url}/override", data={"reason": LONG_REASON, "csrf": csrf, "confirm": confirm_of(asked.text)}
    )
    assert done.status_code == 303
    with session_scope() as s:
        job = s.get(Job, blocked.id)
        assert job is not None and job.status == "succeeded" and job.released


@pytest.fixture
def blocked(server: Server) -> BlockedJob:
    return blocked_job()


# --- the policy form: every knob of the table ---------------------------------------------------------------


def test_the_policy_form_has_every_knob_and_sets_the_new_ones(
    staff: httpx.Client, blocked: BlockedJob
) -> None:
    url = f"/console/jobs/{blocked.id}"
    page = staff.get(url).text
    form = page[page.index('id="policy"') : page.index("</form>", page.index('id="policy"'))]
    names = set(re.findall(r'name="([^"]+)"', form))
    for knob, spec in KNOBS.items():
        assert knob in names and f'title="{escape(spec.help)}"' in form, knob
        if spec.kind == "limits":
            assert {f"{knob}.{cat}" for cat in harmful_categories()} <= names
    assert "highest ASR" not in page and "gate_cap" not in names
    csrf = csrf_of(page)
    tighter = {"gate_judges": "any", "gate_category_limits": "sent", "gate_category_limits.fraud": "0.02"}
    assert staff.post(f"{url}/policy", data={**tighter, "reason": "tighter", "csrf": csrf}).status_code == 303
    assert _policy(blocked.org) == {"gate_judges": "any", "gate_category_limits": {"fraud": 0.02}}
    page = staff.get(url).text
    assert (
        'name="gate_category_limits.fraud" value="0.02"' in page and "<option selected>any</option>" in page
    )
    cleared = {"gate_category_limits": "sent", "gate_category_limits.fraud": "", "reason": "x" * 5}
    asked = staff.post(f"{url}/policy", data={**cleared, "csrf": csrf})
    assert asked.status_code == 200 and "gate_category_limits {fraud: 0.02} → {} (looser)" in asked.text
    bad = staff.post(
        f"{url}/policy",
        data={
            "gate_category_limits": "sent",
            "gate_category_limits.fraud": "lots",
            "reason": "tighter",
            "csrf": csrf,
        },
    )
    assert bad.status_code == 422 and "gate_category_limits.fraud must be a number" in bad.text


def test_a_knob_added_to_the_table_is_in_the_policy_form_and_checked(staff: httpx.Client) -> None:
    """The form reads the knob table when it is drawn, and a posted value goes through the policy's check."""
    blocked = blocked_job()  # its own organization: the knob it stores is gone after this test
    url = f"/console/jobs/{blocked.id}"
    with throwaway_knob() as knob:
        page = staff.get(url).text
        form = page[page.index('id="policy"') : page.index("</form>", page.index('id="policy"'))]
        assert f'name="{knob.name}" value="0.4"' in form and knob.label in form
        assert "[0, 1], smaller is stricter" in form and f'title="{knob.help}"' in form
        csrf = csrf_of(page)
        bad = staff.post(f"{url}/policy", data={knob.name: "7", "reason": "tighter", "csrf": csrf})
        assert bad.status_code == 422 and f"policy.{knob.name} must be within [0, 1], got 7" in bad.text
        ok = staff.post(f"{url}/policy", data={knob.name: "0.1", "reason": "tighter", "csrf": csrf})
        assert ok.status_code == 303 and _policy(blocked.org) == {knob.name: 0.1}
    assert knob.name not in staff.get("/console/jobs").text


# --- the audit page -----------------------------------------------------------------------------------------


def test_the_audit_page_lists_every_organization_filtered_and_paged(
    server: Server, console_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.routes.console

    tag = secrets.token_hex(3)
    orgs = [blocked_job(f"org-a-{tag}"), blocked_job(f"org-b-{tag}")]
    names = (f"Ann {tag}", f"Ben {tag}")
    settings = get_settings()
    with session_scope() as s:
        admins = [Admin(create_admin_key(s, n).key_id, n) for n in names]
        for i, job in enumerate(orgs):
            org = s.query(Organization).filter_by(name=job.org).one()
            set_org_policy(s, admins[i], org, {"mitigation": "drop"}, f"tighten {job.org}", settings)
            set_org_policy(
                s, admins[1], org, {"gate_delta": 0.2}, f"loosen {job.org}: {LONG_REASON}", settings
            )
    a_id = org_id_of(orgs[0].org)
    with browser(server) as client:
        assert client.get("/console/audit").headers["location"] == "/console/login"
        assert login(client, admin_key()).status_code == 303
        everything = client.get("/console/audit")
        assert everything.status_code == 200 and f"tighten {orgs[0].org}" in everything.text
        assert f"tighten {orgs[1].org}" in everything.text and 'href="/console/audit"' in everything.text
        one = client.get("/console/audit", params={"org": a_id}).text
        assert f"tighten {orgs[0].org}" in one and f"tighten {orgs[1].org}" not in one and "2 entries" in one
        assert "gate_delta 0.05 → 0.20 (looser)" in one and "mitigation downweight → drop (tighter)" in one
        ben = client.get("/console/audit", params={"admin": names[1]}).text
        assert "3 entries" in ben and f"tighten {orgs[0].org}" not in ben
        both = client.get(
            "/console/audit", params={"admin": names[1], "action": "set_org_policy", "org": a_id}
        )
        assert "1 entry" in both.text
        assert "0 entries" in client.get("/console/audit", params={"org": a_id, "since": "2999-01-01"}).text
        assert "2 entries" in client.get("/console/audit", params={"org": a_id, "until": "2999-01-01"}).text
        assert (
            "0 entries" in client.get("/console/audit", params={"org": a_id, "action": "revoke_adapter"}).text
        )
        bad = client.get("/console/audit", params={"action": "delete_everything"})
        assert bad.status_code == 400 and "action must be one of" in bad.text
        assert client.get("/console/audit", params={"since": "soon"}).status_code == 400
        monkeypatch.setattr(api.routes.console, "AUDIT_PER_PAGE", 1)
        first = client.get("/console/audit", params={"org": a_id}).text
        assert "page 1 of 2" in first and f"loosen {orgs[0].org}" in first  # newest first
        link = re.search(r'href="([^"]+)" rel="next"', first)
        assert link, first
        second = client.get(link.group(1).replace("&amp;", "&")).text
        assert f"tighten {orgs[0].org}" in second and "page 2 of 2" in second


# --- the report's header ------------------------------------------------------------------------------------


def test_the_downloaded_reports_open_with_the_header(
    server: Server, staff: httpx.Client, blocked: BlockedJob
) -> None:
    tenant = httpx.get(
        f"{server.base_url}/v1/fine_tuning/jobs/{blocked.id}/safety_report.html",
        headers={"Authorization": f"Bearer {blocked.key}"},
    )
    console = staff.get(f"/console/jobs/{blocked.id}/report.html")
    for html in (tenant.text, console.text):
        body = html[html.index("<body>") + len("<body>") :].lstrip()
        assert body.startswith('<header id="report-header">'), body[:200]
        header = body[: body.index("</header>")]
        assert blocked.id in header and blocked.org in header and MODEL in header
        assert "created 20" in header and "this page 20" in header
        assert body.index("</header>") < body.index('<section id="decision">')
