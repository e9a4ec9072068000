"""The moderators' audit log: append-only (this module inserts and reads; nothing updates or deletes).

Every console action (override, revoke, policy change, adding or deleting an organization's webhook) writes
one entry in the same transaction as the change itself, so an action without its entry cannot be committed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.keys import Admin
from models.tables import AuditEntry
from tunegate.errors import InvalidRequest

OVERRIDE = "override_release"
REVOKE = "revoke_adapter"
SET_POLICY = "set_org_policy"
ADD_WEBHOOK = "add_webhook"
DELETE_WEBHOOK = "delete_webhook"
ACTIONS = (OVERRIDE, REVOKE, SET_POLICY, ADD_WEBHOOK, DELETE_WEBHOOK)
MIN_REASON_CHARS = 5
MAX_REASON_CHARS = 2000


def check_reason(reason: str | None) -> str:
    """The stripped reason; ``InvalidRequest`` (param ``reason``) when missing, too short or too long."""
    text = (reason or "").strip()
    if len(text) < MIN_REASON_CHARS:
        raise InvalidRequest(
            f"a reason of at least {MIN_REASON_CHARS} characters is required for every action", param="reason"
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
    details: dict[str, Any] | None = None,
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


def as_dict(entry: AuditEntry) -> dict[str, Any]:
    """The plain form the report templates read."""
    return {
        "id": entry.id,
        "at": entry.created_at,
        "who": entry.actor_name,
        "action": entry.action,
        "reason": entry.reason,
        "job_id": entry.job_id,
        "details": entry.details,
    }
