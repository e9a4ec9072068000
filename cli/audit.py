"""``tunegate audit``: the moderators' audit log on the shell, every organization's entries, newest first.

An operator's view, like ``tunegate keys`` and ``orgs`` (cli/admin.py): it reads the configured database
directly, not the API. The console's audit page (``/console/audit``) shows the same entries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypedDict

import typer

from cli.errors import fail
from cli.options import AsJson, emit
from tunegate.jsontypes import JsonObject

if TYPE_CHECKING:
    from models.tables import AuditEntry


def audit_log(
    org: str | None = typer.Option(None, "--org", help="Only this organization (its name or id)."),
    action: str | None = typer.Option(
        None,
        "--action",
        help="Only this action (override_release, revoke_adapter, set_org_policy, add_webhook, ...).",
    ),
    limit: int = typer.Option(50, "--limit", min=1, max=100_000, help="At most this many entries."),
    as_json: AsJson = False,
) -> None:
    """List the moderators' audit entries (who, what, when, why), newest first: one tab-separated line each
    (when, organization, action, admin, job, change, reason), or a JSON array with --json."""
    from sqlalchemy import or_, select

    from models import audit
    from models.db import session_scope
    from models.moderation import describe_entry
    from models.tables import Organization

    if action is not None and action not in audit.ACTIONS:
        raise typer.BadParameter(
            f"{action!r} is not an audit action (one of: {', '.join(audit.ACTIONS)})", param_hint="'--action'"
        )
    with session_scope() as session:
        org_id = None
        if org is not None:
            row = session.scalar(
                select(Organization).where(or_(Organization.name == org, Organization.id == org))
            )
            if row is None:
                fail(f"no organization named {org!r}")
            org_id = row.id
        entries, _ = audit.search(session, audit.AuditFilter(org_id=org_id, action=action), limit=limit)
        ids = {e.org_id for e in entries if e.org_id}
        found = session.execute(select(Organization.id, Organization.name).where(Organization.id.in_(ids)))
        names = {str(i): str(n) for i, n in found.tuples()}
        rows = [_row(e, names, describe_entry(e)) for e in entries]
    if not rows and not as_json:
        typer.echo("no audit entries match", err=True)
    emit(rows, _line, as_json)


class AuditRow(TypedDict):
    """One audit entry as ``tunegate audit`` prints it (a line, or an object of --json)."""

    id: str
    created_at: str  # ISO 8601
    org_id: str | None
    org: str | None  # its name (the id when the organization is gone)
    action: str
    actor: str
    actor_key_id: str
    job_id: str | None
    change: str  # the change in words
    reason: str
    details: JsonObject


def _row(entry: AuditEntry, names: dict[str, str], change: str) -> AuditRow:
    return {
        "id": entry.id,
        "created_at": entry.created_at.isoformat(),
        "org_id": entry.org_id,
        "org": names.get(entry.org_id or "", entry.org_id),
        "action": entry.action,
        "actor": entry.actor_name,
        "actor_key_id": entry.actor_key_id,
        "job_id": entry.job_id,
        "change": change,
        "reason": entry.reason,
        "details": entry.details,
    }


def _flat(text: str | None) -> str:
    """One line of a tab-separated row: tabs and line breaks as spaces."""
    return " ".join(str(text if text is not None else "-").split()) or "-"


def _line(r: AuditRow) -> str:
    when = r["created_at"][:16].replace("T", " ")
    fields = (when, r["org"], r["action"], r["actor"], r["job_id"], r["change"], r["reason"])
    return "\t".join(_flat(f) for f in fields)


def register(app: typer.Typer) -> None:
    """Add this module's command to the root app."""
    app.command("audit")(audit_log)
