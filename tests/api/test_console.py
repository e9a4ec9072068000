"""The moderator console over HTTP against a real server: access, queue, job page, actions, audit log."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator

import httpx
import openai
import pytest

from models.db import session_scope
from models.keys import revoke_key
from models.tables import AuditEntry, Job, Organization
from tests.api.conftest import admin_key, new_key, sdk
from tests.api.moderation_jobs import BlockedJob, blocked_job
from tests.api.server import Server


def browser(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, follow_redirects=False, timeout=30)


def login(client: httpx.Client, key: str) -> httpx.Response:
    form = client.get("/console/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf, form.text
    return client.post("/console/login", data={"key": key, "csrf": csrf.group(1)})


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def confirm_of(page: str) -> str:
    found = re.search(r'name="confirm" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


def override(client: httpx.Client, url: str, csrf: str, reason: str) -> httpx.Response:
    """An override as a moderator makes it: the form's post answers a confirmation page naming the release,
    whose confirmed post acts (the answer of the first post when it is not that page)."""
    first = client.post(f"{url}/override", data={"reason": reason, "csrf": csrf})
    if first.status_code != 200:
        return first
    assert "please confirm" in first.text, first.text
    return client.post(
        f"{url}/override", data={"reason": reason, "csrf": csrf, "confirm": confirm_of(first.text)}
    )


@pytest.fixture
def staff(server: Server, console_env: None) -> Iterator[httpx.Client]:
    with browser(server) as client:
        resp = login(client, admin_key())
        assert resp.status_code == 303 and resp.headers["location"] == "/console/jobs"
        yield client


@pytest.fixture
def blocked(server: Server) -> BlockedJob:
    return blocked_job()


def test_no_page_without_a_session(server: Server, console_env: None, blocked: BlockedJob) -> None:
    with browser(server) as client:
        for path in (
            "/console",
            "/console/jobs",
            f"/console/jobs/{blocked.id}",
            "/console/jobs/ftjob-nope",
            f"/console/jobs/{blocked.id}/report.html",
        ):
            resp = client.get(path)
            assert resp.status_code == 303 and resp.headers["location"] == "/console/login", path
            assert blocked.id not in resp.text and blocked.risky_text not in resp.text
        resp = client.post(f"/console/jobs/{blocked.id}/override", data={"reason": "looks fine", "csrf": "x"})
        assert resp.status_code == 403 and blocked.risky_text not in resp.text
        client.cookies.set("tg_console", "forged.token", path="/console")
        assert client.get("/console/jobs").status_code == 303
    with session_scope() as s:
        job = s.get(Job, blocked.id)
        assert job is not None and job.status == "failed"


def test_org_key_is_refused_and_bad_keys_named(server: Server, console_env: None) -> None:
    with browser(server) as client:
        resp = login(client, new_key())
        assert resp.status_code == 403 and "admin key is required" in resp.text
        assert "tg_console=" not in resp.headers.get("set-cookie", "").replace("tg_console_login=", "")
        resp = login(client, "tga-wrong")
        assert resp.status_code == 401 and "Incorrect API key" in resp.text
        resp = client.post("/console/login", data={"key": admin_key(), "csrf": "not-the-form's"})
        assert resp.status_code == 403 and "expired" in resp.text


def test_session_cookie_is_signed_http_only_and_ends_with_the_key(server: Server, console_env: None) -> None:
    key = admin_key()
    with browser(server) as client:
        resp = login(client, key)
        cookie = next(c for c in resp.headers.get_list("set-cookie") if c.startswith("tg_console="))
        assert (
            "httponly" in cookie.lower()
            and "samesite=strict" in cookie.lower()
            and "path=/console" in cookie.lower()
        )
        assert client.get("/console/jobs").status_code == 200
        with session_scope() as s:
            revoke_key(s, key)
        assert client.get("/console/jobs").status_code == 303


def test_queue_lists_and_filters(staff: httpx.Client, blocked: BlockedJob) -> None:
    page = staff.get("/console/jobs")
    assert page.status_code == 200 and blocked.id in page.text
    assert (
        page.headers["cache-control"] == "no-store"
        and "default-src 'none'" in page.headers["content-security-policy"]
    )
    with session_scope() as s:
        job = s.get(Job, blocked.id)
        assert job is not None
        org_id = job.org_id
    other = blocked_job()
    by_org = staff.get("/console/jobs", params={"org": org_id}).text
    assert blocked.id in by_org and other.id not in by_org
    assert (
        blocked.id
        in staff.get("/console/jobs", params={"state": "blocked", "code": "safety_eval_failed"}).text
    )
    assert (
        blocked.id in staff.get("/console/jobs", params={"state": "repaired", "model": "smollm2-135m"}).text
    )
    assert blocked.id not in staff.get("/console/jobs", params={"state": "revoked"}).text
    assert blocked.id not in staff.get("/console/jobs", params={"code": "unsafe_training_data"}).text
    assert blocked.id not in staff.get("/console/jobs", params={"until": "2000-01-01"}).text
    bad = staff.get("/console/jobs", params={"since": "yesterday"})
    assert bad.status_code == 400 and "since must be a date" in bad.text


def test_job_page_shows_the_flagged_text_and_the_decision(staff: httpx.Client, blocked: BlockedJob) -> None:
    page = staff.get(f"/console/jobs/{blocked.id}").text
    assert blocked.risky_text in page and "safety_eval_failed" in page
    assert "down-weighted" in page and "riskier than" in page  # what mitigation did, and why, in words
    assert "Examples added" in page and "Timeline" in page
    assert "True" not in page and "False" not in page
    assert staff.get("/console/jobs/ftjob-nope").status_code == 404


def test_override_needs_csrf_and_reason_then_releases(
    server: Server, staff: httpx.Client, blocked: BlockedJob
) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    assert (
        staff.post(f"{url}/override", data={"reason": "reviewed, fine", "csrf": "wrong"}).status_code == 403
    )
    no_reason = override(staff, url, csrf, "  ")
    assert no_reason.status_code == 400 and "reason" in no_reason.text
    done = override(staff, url, csrf, "Reviewed: lock-picking for a locksmith course")
    assert done.status_code == 303
    page = staff.get(done.headers["location"]).text
    assert "Dana Moderator" in page and "lock-picking for a locksmith course" in page and "override" in page
    client = sdk(server, blocked.key)
    job = client.fine_tuning.jobs.retrieve(blocked.id)
    assert job.status == "succeeded" and job.fine_tuned_model and job.error is None
    assert job.fine_tuned_model in {m.id for m in client.models.list()}
    assert client.get(f"/fine_tuning/jobs/{blocked.id}/adapter", cast_to=bytes)[:2] == b"\x1f\x8b"
    events = [e.message for e in client.fine_tuning.jobs.list_events(blocked.id)]
    assert any("moderator override" in m for m in events)
    again = override(staff, url, csrf, "twice, by a second moderator")
    assert again.status_code == 409


def test_revoke_withdraws_the_adapter(server: Server, staff: httpx.Client, blocked: BlockedJob) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    assert staff.post(f"{url}/revoke", data={"reason": "not released yet", "csrf": csrf}).status_code == 409
    assert override(staff, url, csrf, "ok after review by the safety team").status_code == 303
    client = sdk(server, blocked.key)
    name = client.fine_tuning.jobs.retrieve(blocked.id).fine_tuned_model
    assert (
        staff.post(f"{url}/revoke", data={"reason": "customer complaint #42", "csrf": csrf}).status_code
        == 303
    )
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.get(f"/fine_tuning/jobs/{blocked.id}/adapter", cast_to=bytes)
    assert info.value.code == "adapter_revoked"
    assert name not in {m.id for m in client.models.list()}
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(str(name))
    assert blocked.id in staff.get("/console/jobs", params={"state": "revoked"}).text


def test_policy_change_stays_within_bounds(staff: httpx.Client, blocked: BlockedJob) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    bad = staff.post(f"{url}/policy", data={"gate_delta": "1.5", "reason": "tighten please", "csrf": csrf})
    assert bad.status_code == 422 and "gate_delta" in bad.text
    ok = staff.post(
        f"{url}/policy",
        data={
            "gate_delta": "0.01",
            "mitigation": "drop",
            "over_refusal_action": "fail",
            "max_repair_share": "0.2",
            "reason": "repeat offender",
            "csrf": csrf,
        },
    )
    assert ok.status_code == 303  # tighter only: no confirmation
    with session_scope() as s:
        org = s.query(Organization).filter_by(name=blocked.org).one()
        assert org.policy["gate_delta"] == 0.01 and org.policy["mitigation"] == "drop"
        assert org.policy["over_refusal_action"] == "fail" and org.policy["max_repair_share"] == 0.2
        entry = s.query(AuditEntry).filter_by(org_id=org.id, action="set_org_policy").one()
        assert entry.reason == "repeat offender" and entry.details["changed"]["gate_delta"]["to"] == 0.01
    assert "repeat offender" in staff.get(url).text


def test_reports_carry_the_text_and_the_audit_entries(
    server: Server, staff: httpx.Client, blocked: BlockedJob
) -> None:
    url = f"/console/jobs/{blocked.id}"
    csrf = csrf_of(staff.get(url).text)
    assert override(staff, url, csrf, "approved for the locksmith course").status_code == 303
    download = staff.get(f"{url}/report.html")
    assert download.status_code == 200 and "attachment" in download.headers["content-disposition"]
    tenant = httpx.get(
        f"{server.base_url}/v1/fine_tuning/jobs/{blocked.id}/safety_report.html",
        headers={"Authorization": f"Bearer {blocked.key}"},
    )
    assert tenant.status_code == 200
    for html in (download.text, tenant.text):
        assert blocked.risky_text in html and "approved for the locksmith course" in html
        assert "<script" not in html and not re.search(r"(src|href)=\"https?:", html)
    stranger = httpx.get(
        f"{server.base_url}/v1/fine_tuning/jobs/{blocked.id}/safety_report.html",
        headers={"Authorization": f"Bearer {new_key()}"},
    )
    assert stranger.status_code == 404 and blocked.risky_text not in stranger.text


def test_admin_key_cannot_use_the_v1_report(server: Server, blocked: BlockedJob) -> None:
    resp = httpx.get(
        f"{server.base_url}/v1/fine_tuning/jobs/{blocked.id}/safety_report.html",
        headers={"Authorization": f"Bearer {admin_key(f'admin-{secrets.token_hex(2)}')}"},
    )
    assert resp.status_code == 403


def test_logout_needs_the_session_token(server: Server, staff: httpx.Client) -> None:
    assert staff.post("/console/logout", data={"csrf": "forged"}).status_code == 403
    csrf = csrf_of(staff.get("/console/jobs").text)
    assert staff.get("/console/jobs").status_code == 200
    resp = staff.post("/console/logout", data={"csrf": csrf})
    assert resp.status_code == 303 and resp.headers["location"] == "/console/login"
    assert staff.get("/console/jobs").status_code == 303


def test_logout_ends_the_session_for_every_copy_of_its_cookie(
    server: Server, console_env: None, blocked: BlockedJob
) -> None:
    """Issue 29 §4: a session cookie captured before logout opens no page after it (the session ends on the
    server), while another login of the same key goes on."""
    key = admin_key()
    with browser(server) as desk, browser(server) as laptop, browser(server) as thief:
        for client in (desk, laptop):
            assert login(client, key).status_code == 303
        captured = desk.cookies.get("tg_console")
        assert captured
        csrf = csrf_of(desk.get("/console/jobs").text)
        assert desk.post("/console/logout", data={"csrf": csrf}).status_code == 303
        thief.cookies.set("tg_console", captured, path="/console")
        page = thief.get("/console/jobs")
        assert page.status_code == 303 and page.headers["location"] == "/console/login"
        act = thief.post(f"/console/jobs/{blocked.id}/override", data={"reason": "stolen", "csrf": csrf})
        assert act.status_code == 403 and blocked.risky_text not in act.text
        assert laptop.get("/console/jobs").status_code == 200  # the other session is its own


def test_failed_logins_are_rate_limited(
    server: Server, console_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core.ratelimit import AUTH_FAILURES
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_AUTH_FAILURES_PER_MINUTE", "2")
    reset_settings()
    try:
        with browser(server) as client:
            assert [login(client, "tga-guess").status_code for _ in range(3)] == [401, 401, 429]
            assert "Too many failed logins" in login(client, admin_key()).text
    finally:
        AUTH_FAILURES.reset()


def test_queue_pages_newest_first(staff: httpx.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    import api.routes.console

    older = blocked_job()
    newer = blocked_job(older.org)
    monkeypatch.setattr(api.routes.console, "PER_PAGE", 1)
    with session_scope() as s:
        org = s.query(Organization).filter_by(name=older.org).one()
        org_id = org.id
    first = staff.get("/console/jobs", params={"org": org_id}).text
    assert newer.id in first and older.id not in first and "page 1 of 2" in first
    link = re.search(r'href="([^"]+)" rel="next"', first)
    assert link, first
    second = staff.get(link.group(1).replace("&amp;", "&")).text
    assert older.id in second and newer.id not in second and 'rel="prev"' in second


def test_staff_manage_an_organizations_webhooks(
    server: Server, staff: httpx.Client, blocked: BlockedJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Add an endpoint for the job's organization (its secret shown once), see it through the org's own API,
    see its delivery log on the page, delete it; both actions are in the audit log; CSRF is required.
    127.0.0.1 is refused at registration unless the provider allows it (issue 28: the console's too)."""
    from tunegate.settings import reset_settings

    monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", '["127.0.0.1/32"]')
    reset_settings()
    url = f"/console/jobs/{blocked.id}"
    page = staff.get(url)
    csrf = csrf_of(page.text)
    hook = {
        "url": "http://127.0.0.1:9/hooks",
        "events": ["fine_tuning.job.succeeded"],
        "reason": "set up for acme",
    }
    assert staff.post(f"{url}/webhooks", data={**hook, "csrf": "forged"}).status_code == 403
    bad = staff.post(f"{url}/webhooks", data={**hook, "url": "ftp://x", "csrf": csrf})
    assert bad.status_code == 400 and "url" in bad.text
    added = staff.post(f"{url}/webhooks", data={**hook, "csrf": csrf})
    assert added.status_code == 200 and "whsec_" in added.text
    client = sdk(server, blocked.key)
    (endpoint,) = client.get("/webhooks", cast_to=object)["data"]  # type: ignore[index]
    assert endpoint["url"] == hook["url"] and "secret" not in endpoint
    assert "whsec_" not in staff.get(url).text  # shown once
    # the override releases the job: its succeeded event is logged for the endpoint
    assert override(staff, url, csrf, "ok after review by the safety team").status_code == 303
    shown = staff.get(url).text
    assert "fine_tuning.job.succeeded" in shown and "pending" in shown and "set up for acme" in shown
    gone = staff.post(f"{url}/webhooks/{endpoint['id']}/delete", data={"reason": "org asked", "csrf": csrf})
    assert gone.status_code == 303
    assert client.get("/webhooks", cast_to=object)["data"] == []  # type: ignore[index]
    with session_scope() as s:
        actions = {e.action for e in s.query(AuditEntry).filter(AuditEntry.job_id.is_(None))}
    assert {"add_webhook", "delete_webhook"} <= actions
