"""The moderators' audit log: append-only (this module inserts and reads; nothing updates or deletes).

Every console action (override, revoke, policy change, adding or deleting an organization's webhook) writes
one entry in the same transaction as the change itself, so an action without its entry cannot be committed.
An action that loosens a safeguard (releasing an adapter the gate blocked, loosening an organization's policy)
needs a longer reason (``LOOSENING_REASON_CHARS``) than the others. ``search`` is the operator's view of every
organization's entries (the console's audit page, ``tunegate audit``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from models.keys import Admin
from models.tables import AuditEntry
from tunegate.errors import InvalidRequest
from tunegate.jsontypes import JsonValue

OVERRIDE = "override_release"
REVOKE = "revoke_adapter"
SET_POLICY = "set_org_policy"
ADD_WEBHOOK = "add_webhook"
DELETE_WEBHOOK = "delete_webhook"
ACTIONS = (OVERRIDE, REVOKE, SET_POLICY, ADD_WEBHOOK, DELETE_WEBHOOK)
MIN_REASON_CHARS = 5
# releasing what the gate blocked, or loosening an organization's policy: the reason must say why
LOOSENING_REASON_CHARS = 20
MAX_REASON_CHARS = 2000


def check_reason(reason: str | None, minimum: int = MIN_REASON_CHARS) -> str:
    """The stripped reason; ``InvalidRequest`` (param ``reason``) when missing, shorter than ``minimum``
    characters (``LOOSENING_REASON_CHARS`` for an action that loosens a safeguard) or too long."""
    text = (reason or "").strip()
    if len(text) < minimum:
        what = (
            "for every action"
            if minimum <= MIN_REASON_CHARS
            else "to loosen a safeguard (override a block or loosen a policy)"
        )
        got = f" (got {len(text)})" if text else ""
        raise InvalidRequest(
            f"a reason of at least {minimum} characters is required {what}{got}", param="reason"
        )
    if len(text) > MAX_REASON_CHARS:
        raise InvalidRequest(f"the reason is longer than {MAX_REASON_CHARS} characters", param="reason")
    return text


def append(
    session: Session,
    admin: Admin,
    action: str,
    reason: str,
    *,
    org_id: str | None = None,
    job_id: str | None = None,
    details: Mapping[str, JsonValue] | None = None,
) -> AuditEntry:
    if action not in ACTIONS:
        raise ValueError(f"audit action must be one of {ACTIONS}, got {action!r}")
    entry = AuditEntry(
        actor_key_id=admin.key_id,
        actor_name=admin.name,
        action=action,
        reason=check_reason(reason),
        org_id=org_id,
        job_id=job_id,
        details=dict(details or {}),
    )
    session.add(entry)
    session.flush()
    return entry


def for_job(session: Session, job_id: str) -> list[AuditEntry]:
    """A job's entries, oldest first."""
    stmt = select(AuditEntry).where(AuditEntry.job_id == job_id)
    return list(session.scalars(stmt.order_by(AuditEntry.created_at, AuditEntry.id)))


def for_org(session: Session, org_id: str, limit: int = 50) -> list[AuditEntry]:
    """An organization's entries (its jobs' and its policy's), newest first."""
    stmt = select(AuditEntry).where(AuditEntry.org_id == org_id)
    return list(
        session.scalars(stmt.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).limit(limit))
    )


@dataclass(frozen=True)
class AuditFilter:
    """Which entries ``search`` returns (each given field narrows it)."""

    org_id: str | None = None
    action: str | None = None  # one of ACTIONS
    actor: str | None = None  # the admin's name or key id, exactly
    since: date | None = None
    until: date | None = None  # inclusive
    job_id: str | None = None


def search(
    session: Session, flt: AuditFilter, *, offset: int = 0, limit: int = 50
) -> tuple[list[AuditEntry], int]:
    """Every organization's entries matching ``flt``, newest first: one page of them and how many match."""
    if flt.action is not None and flt.action not in ACTIONS:
        raise InvalidRequest(
            f"action must be one of {', '.join(ACTIONS)}, got {flt.action!r}", param="action"
        )
    stmt = select(AuditEntry)
    if flt.org_id:
        stmt = stmt.where(AuditEntry.org_id == flt.org_id)
    if flt.action:
        stmt = stmt.where(AuditEntry.action == flt.action)
    if flt.actor:
        stmt = stmt.where(or_(AuditEntry.actor_name == flt.actor, AuditEntry.actor_key_id == flt.actor))
    if flt.job_id:
        stmt = stmt.where(AuditEntry.job_id == flt.job_id)
    if flt.since:
        stmt = stmt.where(AuditEntry.created_at >= datetime.combine(flt.since, time(), UTC))
    if flt.until:
        stmt = stmt.where(
            AuditEntry.created_at < datetime.combine(flt.until + timedelta(days=1), time(), UTC)
        )
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    page = stmt.order_by(AuditEntry.created_at.desc(), AuditEntry.id.desc()).offset(offset).limit(limit)
    return list(session.scalars(page)), int(total)


def actors(session: Session) -> list[str]:
    """The names of the admins who wrote an entry (the audit page's filter)."""
    stmt = select(AuditEntry.actor_name).distinct().order_by(AuditEntry.actor_name)
    return [str(n) for n in session.scalars(stmt)]
