"""The moderator console (/console): server-rendered pages for the provider's staff.

Admin keys log in through a form; the session is a signed, HTTP-only, SameSite=Strict cookie that names the
admin key (re-checked on every request, so revoking the key ends its sessions) and carries a CSRF token that
every POST must echo. Without a session a page redirects to the login form and an action answers 403: no
console content reaches an unauthenticated caller. Every action needs a reason and writes an audit entry.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import moderation as mod
from api.deps import SessionDep, SettingsDep
from api.ratelimit import AUTH_FAILURES
from models import audit, webhooks
from models.keys import ROLE_ADMIN, Admin, authenticate_admin
from models.moderation import (
    add_webhook,
    blocked_code,
    delete_webhook,
    override_release,
    revoke_adapter,
    set_org_policy,
)
from models.policy import KNOBS, MITIGATION_ORDER, org_policy
from models.tables import ApiKey, Job, Organization
from tunegate.errors import InvalidRequest, NotFound, PermissionDenied, TunegateError
from tunegate.reporting import render_page, render_report
from tunegate.reporting.view import report_view
from tunegate.settings import Settings
from tunegate.signing import console_secret, sign, verify

router = APIRouter(prefix="/console", include_in_schema=False)

COOKIE = "tg_console"
LOGIN_COOKIE = "tg_console_login"  # the login form's own CSRF token (a signed nonce)
LOGIN_MAX_AGE_S = 3600
PER_PAGE = 25
NO_STORE = {"cache-control": "no-store", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
# No scripts and no external requests: every style is inline, every chart inline SVG.
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class Staff:
    admin: Admin
    csrf: str


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, "content-security-policy": CSP})


def _set_cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _staff(request: Request, session: Session, settings: Settings) -> Staff | None:
    """The logged-in admin of a valid session cookie whose key is still an unrevoked admin key."""
    token = request.cookies.get(COOKIE)
    payload = (
        verify(token, console_secret(settings), max_age_s=settings.console_session_max_age_s)
        if token
        else None
    )
    if payload is None or payload.get("kind") != "session":
        return None
    key = session.get(ApiKey, str(payload.get("key")))
    if key is None or key.revoked_at is not None or key.role != ROLE_ADMIN:
        return None
    return Staff(Admin(key_id=key.id, name=key.name or key.id), str(payload.get("csrf")))


def _acting(request: Request, session: Session, settings: Settings, csrf: str) -> Staff:
    """The staff member behind a POST: a valid session AND its CSRF token, else ``PermissionDenied``."""
    staff = _staff(request, session, settings)
    if staff is None:
        raise PermissionDenied(
            "Your console session has expired: log in again.", code="console_login_required"
        )
    if not secrets.compare_digest(staff.csrf.encode(), csrf.encode()):
        raise PermissionDenied("The form's CSRF token does not match this session.", code="csrf_failed")
    return staff


def _to_login() -> RedirectResponse:
    return RedirectResponse("/console/login", status_code=303, headers=NO_STORE)


def _error_page(exc: TunegateError, staff: Staff | None = None) -> HTMLResponse:
    page = render_page("console/error.html", staff=staff, message=exc.message, code=exc.code)
    return _html(page, exc.status_code if 400 <= exc.status_code < 600 else 500)


# --- login -------------------------------------------------------------------------------------------------


def _login_page(
    request: Request, settings: Settings, error: str | None = None, status: int = 200
) -> Response:
    nonce = secrets.token_urlsafe(24)
    response = _html(render_page("console/login.html", staff=None, csrf=nonce, error=error), status)
    token = sign({"kind": "login", "nonce": nonce}, console_secret(settings))
    _set_cookie(response, request, LOGIN_COOKIE, token, LOGIN_MAX_AGE_S)
    return response


@router.get("", response_class=HTMLResponse)
def console_home(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    if _staff(request, session, settings) is None:
        return _to_login()
    return RedirectResponse("/console/jobs", status_code=303, headers=NO_STORE)


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, settings: SettingsDep) -> Response:
    return _login_page(request, settings)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    key: Annotated[str, Form(max_length=256)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    secret = console_secret(settings)
    pre = verify(request.cookies.get(LOGIN_COOKIE, ""), secret, max_age_s=LOGIN_MAX_AGE_S)
    if pre is None or pre.get("kind") != "login" or not secrets.compare_digest(str(pre.get("nonce")), csrf):
        return _login_page(request, settings, "The login form expired; please try again.", 403)
    client = request.client.host if request.client else "unknown"
    if AUTH_FAILURES.wait(client, settings.auth_failures_per_minute):  # the API's own guard against guessing
        return _login_page(request, settings, "Too many failed logins from your address; retry later.", 429)
    try:
        admin = authenticate_admin(session, key.strip())
    except TunegateError as exc:  # a wrong key (401) or an organization's key (403)
        if exc.status_code == 401:
            AUTH_FAILURES.take(client, settings.auth_failures_per_minute)
        return _login_page(request, settings, exc.message, exc.status_code)
    session.commit()
    token = sign({"kind": "session", "key": admin.key_id, "csrf": secrets.token_urlsafe(24)}, secret)
    response = RedirectResponse("/console/jobs", status_code=303, headers=NO_STORE)
    _set_cookie(response, request, COOKIE, token, settings.console_session_max_age_s)
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """End the session (a live session's CSRF token is required; an expired one is simply cleared)."""
    staff = _staff(request, session, settings)
    if staff is not None and not secrets.compare_digest(staff.csrf.encode(), csrf.encode()):
        return _error_page(
            PermissionDenied("The form's CSRF token does not match this session.", code="csrf_failed")
        )
    response = _to_login()
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- the queue ---------------------------------------------------------------------------------------------


def _day(value: str | None, param: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError as exc:
        raise InvalidRequest(f"{param} must be a date (YYYY-MM-DD), got {value!r}", param=param) from exc


@router.get("/jobs", response_class=HTMLResponse)
def queue_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    org: Annotated[str | None, Query(max_length=64)] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    state: Annotated[str | None, Query(max_length=32)] = None,
    code: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    staff = _staff(request, session, settings)
    if staff is None:
        return _to_login()
    try:
        if state and state not in mod.STATES:
            raise InvalidRequest(f"state must be one of {', '.join(mod.STATES)}", param="state")
        flt = mod.QueueFilter(
            org_id=org or None,
            model=model or None,
            state=state or None,
            code=code or None,
            since=_day(since, "since"),
            until=_day(until, "until"),
        )
        result = mod.queue(session, flt, page=page, per_page=PER_PAGE)
    except TunegateError as exc:
        return _error_page(exc, staff)
    filters = {"org": org, "model": model, "state": state, "code": code, "since": since, "until": until}
    params = {k: v for k, v in filters.items() if v}
    orgs = session.execute(select(Organization.id, Organization.name).order_by(Organization.name)).tuples()
    models = session.scalars(select(Job.model).distinct().order_by(Job.model))
    page_html = render_page(
        "console/queue.html",
        staff=staff,
        result=result,
        filters=filters,
        orgs=list(orgs),
        models=list(models),
        states=mod.STATES,
        codes=("unsafe_training_data", "safety_eval_failed", "released"),
        link=lambda p: "/console/jobs?" + urlencode({**params, "page": p}),
    )
    return _html(page_html)


# --- a job -------------------------------------------------------------------------------------------------


def _job(session: Session, job_id: str, *, for_update: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id)
    row = session.scalar(stmt.with_for_update() if for_update else stmt)
    if row is None:
        raise NotFound(f"No such fine-tuning job: {job_id}", param="job_id")
    return row


def _job_page(
    session: Session,
    settings: Settings,
    staff: Staff,
    job: Job,
    *,
    error: str | None = None,
    notice: str | None = None,
    status: int = 200,
    new_webhook: dict[str, str] | None = None,
) -> HTMLResponse:
    entries = audit.for_job(session, job.id)
    context = mod.job_context(session, job, entries)
    try:
        view: dict[str, Any] | None = report_view(mod.full_report(session, job, settings), context["policy"])
    except NotFound:
        view = None
    org = session.get(Organization, job.org_id)
    page = render_page(
        "console/job.html",
        staff=staff,
        job=context,
        view=view,
        audit=[audit.as_dict(e) for e in entries],
        blocked=blocked_code(job),
        can_revoke=job.released and job.revoked_at is None,
        org_policy=org_policy(settings, org.policy if org else None),
        knobs=KNOBS,
        mitigation_order=MITIGATION_ORDER,
        org_audit=[audit.as_dict(e) for e in audit.for_org(session, job.org_id) if e.job_id is None],
        org_webhooks=_org_webhooks(session, job.org_id),
        event_types=webhooks.EVENT_TYPES,
        new_webhook=new_webhook,
        error=error,
        notice=notice,
    )
    return _html(page, status)


RECENT_DELIVERIES = 5  # per endpoint on the job page


def _org_webhooks(session: Session, org_id: str) -> list[dict[str, Any]]:
    """The organization's endpoints with their latest deliveries (the delivery log, newest first)."""
    out = []
    for endpoint in webhooks.list_endpoints(session, org_id=org_id):
        rows, _ = webhooks.list_deliveries(session, endpoint=endpoint, after=None, limit=RECENT_DELIVERIES)
        deliveries = [
            {
                "event": e.type,
                "job": e.job_id,
                "status": d.status,
                "attempts": d.attempts,
                "last_error": d.last_error,
                "at": d.created_at,
            }
            for d, e in rows
        ]
        out.append(
            {
                "id": endpoint.id,
                "url": endpoint.url,
                "events": list(endpoint.events),
                "created_at": endpoint.created_at,
                "deliveries": deliveries,
            }
        )
    return out


DONE = {
    "webhook_deleted": "The webhook endpoint is deleted (recorded in the audit log).",
    "override": "The adapter is released (override recorded in the audit log).",
    "revoke": "The adapter is revoked (recorded in the audit log).",
    "policy": "The organization's policy is changed (recorded in the audit log).",
}


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def job_page(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    done: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    staff = _staff(request, session, settings)
    if staff is None:
        return _to_login()
    try:
        job = _job(session, job_id)
    except NotFound as exc:
        return _error_page(exc, staff)
    return _job_page(session, settings, staff, job, notice=DONE.get(done or ""))


@router.get("/jobs/{job_id}/report.html", response_class=HTMLResponse)
def job_report(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The report as a download: the same page a tenant gets, with the examples' text and the audit log."""
    staff = _staff(request, session, settings)
    if staff is None:
        return _to_login()
    try:
        job = _job(session, job_id)
        entries = audit.for_job(session, job.id)
        html = render_report(
            mod.full_report(session, job, settings),
            job=mod.job_context(session, job, entries),
            audit=[audit.as_dict(e) for e in entries],
        )
    except TunegateError as exc:
        return _error_page(exc, staff)
    response = _html(html)
    response.headers["content-disposition"] = f'attachment; filename="{job.id}-report.html"'
    return response


def _act(
    request: Request,
    session: Session,
    settings: Settings,
    job_id: str,
    csrf: str,
    action: Any,
    done: str,
    show: Any = None,
) -> Response:
    """Run one job action as the logged-in staff member, then redirect to the job page (or show the error on
    it). ``show(staff, job, result)``, when given, answers instead of the redirect (a page that must show
    something once, like a new webhook's secret)."""
    try:
        staff = _acting(request, session, settings, csrf)
    except PermissionDenied as exc:
        return _error_page(exc)
    try:
        job = _job(session, job_id, for_update=True)
        result = action(staff.admin, job)
        session.commit()
        if show is not None:
            response: Response = show(staff, job, result)
            return response
    except TunegateError as exc:
        session.rollback()
        try:
            return _job_page(
                session, settings, staff, _job(session, job_id), error=exc.message, status=exc.status_code
            )
        except NotFound:
            return _error_page(exc, staff)
    return RedirectResponse(f"/console/jobs/{job_id}?" + urlencode({"done": done}), status_code=303)


@router.post("/jobs/{job_id}/override", response_class=HTMLResponse)
def override(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Approve the release of an adapter the gate blocked."""
    return _act(
        request,
        session,
        settings,
        job_id,
        csrf,
        lambda admin, job: override_release(session, admin, job, reason, settings),
        "override",
    )


@router.post("/jobs/{job_id}/revoke", response_class=HTMLResponse)
def revoke(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Revoke a released adapter: its download answers 403 and /v1/models drops it."""
    return _act(
        request,
        session,
        settings,
        job_id,
        csrf,
        lambda admin, job: revoke_adapter(session, admin, job, reason),
        "revoke",
    )


def _org_of(session: Session, job: Job) -> Organization:
    org = session.get(Organization, job.org_id)
    if org is None:
        raise NotFound(f"the organization of job {job.id} no longer exists", param="org")
    return org


def _knob(name: str, raw: str) -> Any:
    """A form value as the policy knob's type (a bad number stays text: the policy check then names it)."""
    kind = KNOBS[name]
    if kind == "rank":
        return raw
    if kind == "true":
        return raw == "true"
    try:
        return float(raw)
    except ValueError:
        return raw


@router.post("/jobs/{job_id}/policy", response_class=HTMLResponse)
def set_policy(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
    mitigation: Annotated[str | None, Form(max_length=32)] = None,
    mitigate_top_fraction: Annotated[str | None, Form(max_length=32)] = None,
    max_repair_share: Annotated[str | None, Form(max_length=32)] = None,
    inject_safety_examples: Annotated[str | None, Form(max_length=8)] = None,
    block_unsafe_data: Annotated[str | None, Form(max_length=8)] = None,
    gate_delta: Annotated[str | None, Form(max_length=32)] = None,
    over_refusal_delta: Annotated[str | None, Form(max_length=32)] = None,
    over_refusal_action: Annotated[str | None, Form(max_length=8)] = None,
) -> Response:
    """Change the policy of the job's organization (each knob within its range); only changed knobs count."""
    sent = {
        "mitigation": mitigation,
        "mitigate_top_fraction": mitigate_top_fraction,
        "max_repair_share": max_repair_share,
        "inject_safety_examples": inject_safety_examples,
        "block_unsafe_data": block_unsafe_data,
        "gate_delta": gate_delta,
        "over_refusal_delta": over_refusal_delta,
        "over_refusal_action": over_refusal_action,
    }

    def change(admin: Admin, job: Job) -> None:
        org = _org_of(session, job)
        current = org_policy(settings, org.policy)
        updates = {k: _knob(k, v) for k, v in sent.items() if v is not None and v != ""}
        updates = {k: v for k, v in updates.items() if v != current[k]}
        set_org_policy(session, admin, org, updates, reason, settings)

    return _act(request, session, settings, job_id, csrf, change, "policy")


@router.post("/jobs/{job_id}/webhooks", response_class=HTMLResponse)
def add_org_webhook(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    url: Annotated[str, Form(max_length=4096)] = "",
    events: Annotated[list[str] | None, Form()] = None,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Register a webhook endpoint for the job's organization; the page shows its signing secret this once."""

    def add(admin: Admin, job: Job) -> dict[str, str]:
        row = add_webhook(session, admin, _org_of(session, job), url, list(events or []), reason)
        return {"id": row.id, "url": row.url, "secret": row.secret}

    def show(staff: Staff, job: Job, created: dict[str, str]) -> Response:
        notice = (
            "The webhook endpoint is added (recorded in the audit log). Give its secret to the organization."
        )
        return _job_page(session, settings, staff, job, notice=notice, new_webhook=created)

    return _act(request, session, settings, job_id, csrf, add, "webhook_added", show)


@router.post("/jobs/{job_id}/webhooks/{endpoint_id}/delete", response_class=HTMLResponse)
def delete_org_webhook(
    job_id: str,
    endpoint_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """Delete one of the job's organization's webhook endpoints (and its delivery log)."""

    def delete(admin: Admin, job: Job) -> None:
        delete_webhook(session, admin, _org_of(session, job), endpoint_id, reason)

    return _act(request, session, settings, job_id, csrf, delete, "webhook_deleted")
