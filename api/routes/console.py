"""The moderator console (/console): server-rendered pages for the provider's staff.

Admin keys log in through a form; sessions, their cookies and CSRF tokens are ``api/core/console_auth.py``'s
(a server-side session per login: logout and revoking the key end it). Without a session a page redirects to
the login form and an action answers 403: no console content reaches an unauthenticated caller. Every action
needs a reason and writes an audit entry.

A job's page opens with its header (job, organization, model, time) and the decision, then offers only the
actions that can work on the job as it is (no release without a trained adapter, no report download without
a report). Loosening a safeguard (releasing a blocked adapter, loosening a policy knob) first answers a
confirmation page naming the change; only a post that echoes that confirmation, with a reason of at least
``audit.LOOSENING_REASON_CHARS`` characters, acts (the length is checked again by ``models.moderation``).
The audit page lists every organization's entries (``tunegate audit`` on the shell).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Annotated, Any, TypedDict
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.console_auth import (
    Staff,
    acting_staff,
    current_staff,
    end_session,
    issue_login_nonce,
    log_in,
    new_login_nonce,
    start_session,
    to_login,
)
from api.core.responses import console_page, console_redirect
from api.deps import SessionDep, SettingsDep
from api.services import moderation as mod
from api.services.policy_form import policy_fields, policy_form_fields, policy_updates
from models import audit, presence, webhooks
from models.jobs import JobStatus
from models.keys import Admin
from models.moderation import (
    PolicyChange,
    add_webhook,
    blocked_code,
    delete_webhook,
    describe_entry,
    override_change,
    override_release,
    policy_changes,
    revoke_adapter,
    set_org_policy,
    trained_adapter,
)
from models.policy import org_policy
from models.tables import Job, Organization
from tunegate.errors import InvalidConfig, InvalidRequest, NotFound, PermissionDenied, TunegateError
from tunegate.reporting import render_page, render_report
from tunegate.reporting.view import ReportView, report_view
from tunegate.settings import Settings

router = APIRouter(prefix="/console", include_in_schema=False)

PER_PAGE = 25


def _error_page(exc: TunegateError, staff: Staff | None = None) -> HTMLResponse:
    page = render_page("console/error.html", staff=staff, message=exc.message, code=exc.code)
    return console_page(page, exc.status_code if 400 <= exc.status_code < 600 else 500)


# --- login -------------------------------------------------------------------------------------------------


def _login_page(
    request: Request, settings: Settings, error: str | None = None, status: int = 200
) -> Response:
    nonce = new_login_nonce()
    response = console_page(render_page("console/login.html", staff=None, csrf=nonce, error=error), status)
    issue_login_nonce(request, response, settings, nonce)
    return response


@router.get("", response_class=HTMLResponse)
def console_home(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    if current_staff(request, session, settings) is None:
        return to_login()
    return console_redirect("/console/jobs")


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
    try:  # refused: an expired form (403), a throttled address (429), a wrong (401) or an org's key (403)
        admin = log_in(request, session, settings, key, csrf)
    except TunegateError as exc:
        return _login_page(request, settings, exc.message, exc.status_code)
    response = console_redirect("/console/jobs")
    start_session(session, request, response, settings, admin)
    session.commit()
    return response


@router.post("/logout")
def logout(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    csrf: Annotated[str, Form(max_length=256)] = "",
) -> Response:
    """End the session on the server (a live session's CSRF token is required; an expired one is simply
    cleared): a copy of its cookie opens nothing afterwards."""
    response = to_login()
    try:
        end_session(request, session, settings, response, csrf)
    except PermissionDenied as exc:
        return _error_page(exc)
    session.commit()
    return response


# --- the queue ---------------------------------------------------------------------------------------------

JOB_STATUSES = tuple(s.value for s in JobStatus)


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
    status: Annotated[str | None, Query(max_length=32)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    staff = current_staff(request, session, settings)
    if staff is None:
        return to_login()
    try:
        if state and state not in mod.STATES:
            raise InvalidRequest(f"state must be one of {', '.join(mod.STATES)}", param="state")
        if status and status not in JOB_STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(JOB_STATUSES)}", param="status")
        flt = mod.QueueFilter(
            org_id=org or None,
            model=model or None,
            state=state or None,
            code=code or None,
            since=_day(since, "since"),
            until=_day(until, "until"),
            status=status or None,
        )
        result = mod.queue(session, flt, page=page, per_page=PER_PAGE)
    except TunegateError as exc:
        return _error_page(exc, staff)
    filters = {
        "org": org,
        "model": model,
        "state": state,
        "code": code,
        "since": since,
        "until": until,
        "status": status,
    }
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
        statuses=JOB_STATUSES,
        codes=("unsafe_training_data", "safety_eval_failed", "over_refusal", "released", "cancelled"),
        link=lambda p: "/console/jobs?" + urlencode({**params, "page": p}),
    )
    return console_page(page_html)


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
        share = (context["policy"] or {}).get("mitigate_top_fraction")  # the job's policy (its JSON)
        view: ReportView | None = report_view(
            mod.full_report(session, job, settings), share if isinstance(share, int | float) else None
        )
    except NotFound:
        view = None
    org = session.get(Organization, job.org_id)
    current = org_policy(settings, org.policy if org else None)
    page = render_page(
        "console/job.html",
        staff=staff,
        job=context,
        view=view,
        generated_at=datetime.now(UTC),
        outcome=_outcome(job),
        audit=[mod.audit_line(e) for e in entries],
        actions=_possible_actions(settings, job, view, org),
        policy_fields=policy_fields(current),
        min_reason=audit.MIN_REASON_CHARS,
        loosening_reason=audit.LOOSENING_REASON_CHARS,
        org_audit=[
            {**mod.audit_line(e), "change": describe_entry(e)}
            for e in audit.for_org(session, job.org_id)
            if e.job_id is None
        ],
        org_webhooks=_org_webhooks(session, job.org_id) if org else [],
        event_types=webhooks.EVENT_TYPES,
        new_webhook=new_webhook,
        error=error,
        notice=notice,
        waiting=presence.waiting_message(job, session.connection(), settings),  # no worker on its queue
    )
    return console_page(page, status)


def _outcome(job: Job) -> dict[str, str]:
    """The decision as the job's row says it (the page shows it first when the job has no report)."""
    if job.status == JobStatus.FAILED:
        code = str((job.error.get("code") if job.error else None) or "failed")
        message = str((job.error.get("message") if job.error else None) or "")
        return {"kind": "bad", "title": f"Failed: {code}", "message": message}
    if job.status == JobStatus.CANCELLED:
        return {"kind": "warn", "title": "Cancelled", "message": "The job was cancelled before a decision."}
    if job.status == JobStatus.SUCCEEDED:
        return {"kind": "ok", "title": "Released", "message": "The job succeeded."}
    where = f", stage {job.stage}" if job.stage else ""
    return {"kind": "warn", "title": "No decision yet", "message": f"The job is {job.status}{where}."}


class PossibleActions(TypedDict):
    """Which of the job page's actions can work on the job as it is now."""

    override: str | None  # the gate's code an override would release over (None: none can)
    why_not_override: str | None  # why a blocked job cannot be released (None: it can, or is not blocked)
    revoke: bool
    report: bool
    org: bool  # the job's organization still exists (its policy and webhooks can be changed)


def _possible_actions(
    settings: Settings, job: Job, view: ReportView | None, org: Organization | None
) -> PossibleActions:
    """Which of the page's actions can work on ``job`` as it is now (the page offers no other), and why an
    action the moderator might look for is missing."""
    blocked = blocked_code(job)
    why_not_override = None
    if blocked:
        try:
            trained_adapter(settings, job)
        except NotFound as exc:
            why_not_override = (
                f"The gate blocked this job ({blocked}) but it cannot be released: {exc.message} "
                "(it was stopped before training, or its files are gone)."
            )
    return {
        "override": blocked if blocked and why_not_override is None else None,
        "why_not_override": why_not_override,
        "revoke": job.released and job.revoked_at is None,
        "report": view is not None,
        "org": org is not None,
    }


RECENT_DELIVERIES = 5  # per endpoint on the job page


class DeliveryLine(TypedDict):
    """One delivery of a webhook endpoint on the job page."""

    event: str  # the event's type
    job: str
    status: str
    attempts: int
    last_error: str | None
    at: datetime


class OrgWebhook(TypedDict):
    """One of the organization's webhook endpoints on the job page, with its latest deliveries."""

    id: str
    url: str
    events: list[str]
    created_at: datetime
    deliveries: list[DeliveryLine]


def _org_webhooks(session: Session, org_id: str) -> list[OrgWebhook]:
    """The organization's endpoints with their latest deliveries (the delivery log, newest first)."""
    out: list[OrgWebhook] = []
    for endpoint in webhooks.list_endpoints(session, org_id=org_id):
        rows, _ = webhooks.list_deliveries(session, endpoint=endpoint, after=None, limit=RECENT_DELIVERIES)
        deliveries: list[DeliveryLine] = [
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
    staff = current_staff(request, session, settings)
    if staff is None:
        return to_login()
    try:
        job = _job(session, job_id)
    except NotFound as exc:
        return _error_page(exc, staff)
    return _job_page(session, settings, staff, job, notice=DONE.get(done or ""))


@router.get("/jobs/{job_id}/report.html", response_class=HTMLResponse)
def job_report(job_id: str, request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """The report as a download: the same page a tenant gets, with the examples' text and the audit log."""
    staff = current_staff(request, session, settings)
    if staff is None:
        return to_login()
    try:
        job = _job(session, job_id)
        entries = audit.for_job(session, job.id)
        html = render_report(
            mod.full_report(session, job, settings),
            job=mod.job_context(session, job, entries),
            audit=[mod.audit_line(e) for e in entries],
        )
    except TunegateError as exc:
        return _error_page(exc, staff)
    response = console_page(html)
    response.headers["content-disposition"] = f'attachment; filename="{job.id}-report.html"'
    return response


@dataclass(frozen=True)
class Confirmation:
    """A page asking the moderator to confirm an action that loosens a safeguard, naming the change; the
    action runs only on a post that echoes ``token`` (bound to this very change: a changed job or policy
    asks again)."""

    title: str
    changes: list[str]
    action: str  # the URL the confirmed form posts to
    fields: list[tuple[str, str]]  # the first post's fields, posted again unchanged
    token: str
    reason: str
    button: str
    error: str | None = None
    status: int = 200


def _token(*parts: Any) -> str:
    """A confirmation token for the change described by ``parts`` (not a secret: CSRF guards the post)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _act(
    request: Request,
    session: Session,
    settings: Settings,
    job_id: str,
    csrf: str,
    action: Callable[[Admin, Job], Any],
    done: str,
    show: Any = None,
) -> Response:
    """Run one job action as the logged-in staff member, then redirect to the job page (or show the error on
    it). An action that returns a ``Confirmation`` changed nothing: its page is shown instead.
    ``show(staff, job, result)``, when given, answers instead of the redirect (a page that must show
    something once, like a new webhook's secret)."""
    try:
        staff = acting_staff(request, session, settings, csrf)
    except PermissionDenied as exc:
        return _error_page(exc)
    try:
        job = _job(session, job_id, for_update=True)
        result = action(staff.admin, job)
        if isinstance(result, Confirmation):
            session.rollback()
            return _confirm_page(session, staff, _job(session, job_id), result)
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


def _confirm_page(session: Session, staff: Staff, job: Job, confirm: Confirmation) -> HTMLResponse:
    context = mod.job_context(session, job, audit.for_job(session, job.id))
    page = render_page(
        "console/confirm.html",
        staff=staff,
        job=context,
        generated_at=datetime.now(UTC),
        confirm=confirm,
        min_reason=audit.LOOSENING_REASON_CHARS,
    )
    return console_page(page, confirm.status)


def _reason_refused(exc: InvalidRequest, confirm: Confirmation) -> Confirmation:
    """The confirmation again, saying why the reason was refused (nothing was changed)."""
    return replace(confirm, error=exc.message, status=exc.status_code)


async def _posted(request: Request) -> dict[str, str]:
    """Every text field of a posted form (the first of a repeated name): the policy form's fields follow
    ``models.policy.KNOBS``, so the route cannot list them as parameters."""
    form = await request.form()
    out: dict[str, str] = {}
    for name, value in form.multi_items():
        if isinstance(value, str):
            out.setdefault(name, value)
    return out


PostedDep = Annotated[dict[str, str], Depends(_posted)]


@router.post("/jobs/{job_id}/override", response_class=HTMLResponse)
def override(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
    confirm: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Approve the release of an adapter the gate blocked: the first post answers a confirmation naming the
    release; the confirmed post (with a reason of ``audit.LOOSENING_REASON_CHARS`` characters) releases."""

    def release(admin: Admin, job: Job) -> Any:
        code = blocked_code(job)
        if code is None:
            return override_release(session, admin, job, reason, settings)  # Conflict: nothing to override
        trained_adapter(settings, job)  # NotFound when there is nothing to release: said now, not later
        confirmation = Confirmation(
            title="Override the safety gate",
            changes=[override_change(job)],
            action=f"/console/jobs/{job.id}/override",
            fields=[],
            token=_token("override", job.id, code),
            reason=reason,
            button="Release the adapter",
        )
        if confirm != confirmation.token:
            return confirmation
        try:
            return override_release(session, admin, job, reason, settings)
        except InvalidRequest as exc:
            if exc.param != "reason":
                raise
            return _reason_refused(exc, confirmation)

    return _act(request, session, settings, job_id, csrf, release, "override")


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


@router.post("/jobs/{job_id}/policy", response_class=HTMLResponse)
def set_policy(
    job_id: str,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    form: PostedDep,
    reason: Annotated[str, Form(max_length=4000)] = "",
    csrf: Annotated[str, Form(max_length=256)] = "",
    confirm: Annotated[str, Form(max_length=64)] = "",
) -> Response:
    """Change the policy of the job's organization (each knob within its range); only changed knobs count.
    Loosening any knob first answers a confirmation naming every change; the confirmed post acts."""

    def change(admin: Admin, job: Job) -> Any:
        org = _org_of(session, job)
        current = org_policy(settings, org.policy)
        updates = policy_updates(form, current)
        _, changes = policy_changes(settings, org, updates)  # validates each knob
        if not changes:
            raise InvalidConfig("the policy is unchanged", param="policy")
        confirmation = _policy_confirmation(job, org, changes, form, reason)
        if confirmation is not None and confirm != confirmation.token:
            return confirmation
        try:
            return set_org_policy(session, admin, org, updates, reason, settings)
        except InvalidRequest as exc:
            if exc.param != "reason" or confirmation is None:
                raise
            return _reason_refused(exc, confirmation)

    return _act(request, session, settings, job_id, csrf, change, "policy")


def _policy_confirmation(
    job: Job, org: Organization, changes: list[PolicyChange], form: dict[str, str], reason: str
) -> Confirmation | None:
    """The confirmation a policy change needs (None: it loosens nothing, it needs none)."""
    if not any(c.looser for c in changes):
        return None
    return Confirmation(
        title=f"Loosen the policy of {org.name}",
        changes=[str(c) for c in changes],
        action=f"/console/jobs/{job.id}/policy",
        fields=policy_form_fields(form),
        token=_token("policy", org.id, [(c.knob, c.before, c.after) for c in changes]),
        reason=reason,
        button="Change the policy",
    )


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


# --- the audit log -----------------------------------------------------------------------------------------

AUDIT_PER_PAGE = 50


@router.get("/audit", response_class=HTMLResponse)
def audit_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    org: Annotated[str | None, Query(max_length=64)] = None,
    action: Annotated[str | None, Query(max_length=32)] = None,
    admin: Annotated[str | None, Query(max_length=128)] = None,
    since: Annotated[str | None, Query(max_length=10)] = None,
    until: Annotated[str | None, Query(max_length=10)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Every organization's audit entries, newest first, filtered (organization, action, admin, dates) and
    paginated."""
    staff = current_staff(request, session, settings)
    if staff is None:
        return to_login()
    try:
        if action and action not in audit.ACTIONS:
            raise InvalidRequest(f"action must be one of {', '.join(audit.ACTIONS)}", param="action")
        flt = audit.AuditFilter(
            org_id=org or None,
            action=action or None,
            actor=admin or None,
            since=_day(since, "since"),
            until=_day(until, "until"),
        )
        entries, total = audit.search(session, flt, offset=(page - 1) * AUDIT_PER_PAGE, limit=AUDIT_PER_PAGE)
        pages = max(1, -(-total // AUDIT_PER_PAGE))
        if page > pages:  # past the end (the log is append-only: newer entries push older ones on)
            page = pages
            entries, total = audit.search(
                session, flt, offset=(page - 1) * AUDIT_PER_PAGE, limit=AUDIT_PER_PAGE
            )
    except TunegateError as exc:
        return _error_page(exc, staff)
    orgs = list(
        session.execute(select(Organization.id, Organization.name).order_by(Organization.name)).tuples()
    )
    names = dict(orgs)
    filters = {"org": org, "action": action, "admin": admin, "since": since, "until": until}
    params = {k: v for k, v in filters.items() if v}
    rows = [
        {
            **mod.audit_line(e),
            "org_id": e.org_id,
            "org": names.get(e.org_id or "", e.org_id or ""),
            "key_id": e.actor_key_id,
            "change": describe_entry(e),
        }
        for e in entries
    ]
    page_html = render_page(
        "console/audit.html",
        staff=staff,
        rows=rows,
        total=total,
        page=page,
        pages=pages,
        filters=filters,
        orgs=orgs,
        actions=audit.ACTIONS,
        admins=audit.actors(session),
        link=lambda p: "/console/audit?" + urlencode({**params, "page": p}),
    )
    return console_page(page_html)
