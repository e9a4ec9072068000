"""What provider staff may do from the console, each with a mandatory reason and an audit entry written in the
same transaction: release a blocked adapter (override), revoke a released one, change an organization's
policy within the provider's bounds (each knob's valid range, as ``tunegate orgs set``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from models import audit, webhooks
from models.jobs import JobStatus, fine_tuned_model_name, record_event, transition
from models.keys import Admin
from models.policy import KNOBS, org_policy
from models.tables import AuditEntry, Job, Organization, WebhookEndpoint
from tunegate.errors import GATE_CODES, Conflict, InvalidConfig, NotFound
from tunegate.settings import Settings
from tunegate.storage import tree_exists

# Only the gate's blocking codes (tunegate.errors.GATE_CODES) can be overridden: a job that failed for any
# other reason has no evaluated adapter to release.


def blocked_code(job: Job) -> str | None:
    """The gate's code when the job was blocked by the safety gate, else None."""
    code = (job.error or {}).get("code") if job.status == JobStatus.FAILED else None
    return code if code in GATE_CODES else None


def trained_adapter(settings: Settings, job: Job) -> str:
    """The adapter the gate judged for ``job`` (the gate records it even when it blocks: a local path or its
    key in the object store); ``NotFound`` when there is none or its files are gone."""
    if not job.adapter_path:
        raise NotFound(f"job {job.id} has no trained adapter to release", code="adapter_missing")
    if not tree_exists(settings, job.adapter_path):
        raise NotFound(f"the adapter files of job {job.id} are missing", code="adapter_missing")
    return job.adapter_path


def override_release(session: Session, admin: Admin, job: Job, reason: str, settings: Settings) -> AuditEntry:
    """Release the adapter of a job the gate blocked: it becomes ``succeeded`` (an event says who and why)."""
    code = blocked_code(job)
    if code is None:
        raise Conflict(
            f"job {job.id} was not blocked by the safety gate (status {job.status}): nothing to override",
            param="job",
            code="not_blocked",
        )
    reason = audit.check_reason(reason)
    adapter = trained_adapter(settings, job)
    org = session.get(Organization, job.org_id)
    entry = audit.append(
        session, admin, audit.OVERRIDE, reason, org_id=job.org_id, job_id=job.id, details={"blocked": code}
    )
    transition(
        session,
        job,
        JobStatus.SUCCEEDED,
        message=f"released by moderator override ({admin.name}; was blocked with {code}): {reason}",
        level="warn",
        data={"stage": job.stage, "override": True, "blocked": code},
        override=True,
    )
    job.released, job.revoked_at, job.adapter_path = True, None, adapter
    job.fine_tuned_model = fine_tuned_model_name(
        job.model, org.name if org else job.org_id, job.suffix, job.id
    )
    session.flush()
    webhooks.emit(session, job, "fine_tuning.job.overridden", dedupe_key=f"overridden:{entry.id}")
    return entry


def revoke_adapter(session: Session, admin: Admin, job: Job, reason: str) -> AuditEntry:
    """Withdraw a released adapter: its download answers 403 ``adapter_revoked`` and /v1/models drops it."""
    if not job.released:
        raise Conflict(f"job {job.id} has no released adapter to revoke", param="job", code="not_released")
    if job.revoked_at is not None:
        raise Conflict(f"the adapter of job {job.id} is already revoked", param="job", code="already_revoked")
    reason = audit.check_reason(reason)
    entry = audit.append(session, admin, audit.REVOKE, reason, org_id=job.org_id, job_id=job.id)
    job.revoked_at = entry.created_at
    record_event(
        session,
        job,
        f"adapter revoked by the provider ({admin.name}): {reason}",
        level="warn",
        data={"revoked": True},
    )
    return entry


def set_org_policy(
    session: Session,
    admin: Admin,
    org: Organization,
    updates: dict[str, Any],
    reason: str,
    settings: Settings,
) -> AuditEntry:
    """Set safety knobs of ``org`` (the floor its jobs may only tighten); ``InvalidConfig`` names bad ones."""
    unknown = sorted(set(updates) - set(KNOBS))
    if unknown:
        raise InvalidConfig(f"policy.{unknown[0]}: unknown safety setting", param=f"policy.{unknown[0]}")
    reason = audit.check_reason(reason)
    before = org_policy(settings, org.policy)
    merged = {**(org.policy or {}), **updates}
    after = org_policy(settings, merged)  # validates every knob within its range
    changed = {k: {"from": before[k], "to": after[k]} for k in KNOBS if before[k] != after[k]}
    if not changed:
        raise InvalidConfig("the policy is unchanged", param="policy")
    org.policy = merged
    return audit.append(session, admin, audit.SET_POLICY, reason, org_id=org.id, details={"changed": changed})


def add_webhook(
    session: Session, admin: Admin, org: Organization, url: str, events: list[str], reason: str
) -> WebhookEndpoint:
    """Register a webhook endpoint for ``org`` on its behalf (the caller shows the secret once)."""
    reason = audit.check_reason(reason)
    row = webhooks.create_endpoint(session, org_id=org.id, url=url, events=events)
    details = {"endpoint": row.id, "url": row.url, "events": list(row.events)}
    audit.append(session, admin, audit.ADD_WEBHOOK, reason, org_id=org.id, details=details)
    return row


def delete_webhook(session: Session, admin: Admin, org: Organization, endpoint_id: str, reason: str) -> None:
    """Remove one of ``org``'s webhook endpoints (and its delivery log)."""
    reason = audit.check_reason(reason)
    row = webhooks.get_endpoint(session, org_id=org.id, endpoint_id=endpoint_id)
    details = {"endpoint": row.id, "url": row.url}
    webhooks.delete_endpoint(session, org_id=org.id, endpoint_id=endpoint_id)
    audit.append(session, admin, audit.DELETE_WEBHOOK, reason, org_id=org.id, details=details)
