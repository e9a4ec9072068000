"""What provider staff may do from the console, each with a mandatory reason and an audit entry written in the
same transaction: release a blocked adapter (override), revoke a released one, change an organization's
policy within the provider's bounds (each knob's valid range, as ``tunegate orgs set``).

Releasing what the gate blocked and loosening a policy knob weaken a safeguard: their reason must be at least
``audit.LOOSENING_REASON_CHARS`` characters (checked here, whatever the caller; the console also asks for a
confirmation that names the change, ``policy_changes`` / ``override_change``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from models import audit, webhooks
from models.jobs import JobStatus, fine_tuned_model_name, record_event, transition
from models.keys import Admin
from models.policy import KNOBS, org_policy
from models.tables import AuditEntry, Job, Organization, WebhookEndpoint
from tunegate.errors import GATE_CODES, Conflict, InvalidConfig, NotFound
from tunegate.jsontypes import JsonObject, JsonValue
from tunegate.schema import jsonable
from tunegate.settings import Settings
from tunegate.storage import tree_exists

# Only the gate's blocking codes (tunegate.errors.GATE_CODES) can be overridden: a job that failed for any
# other reason has no evaluated adapter to release.


def blocked_code(job: Job) -> str | None:
    """The gate's code when the job was blocked by the safety gate, else None."""
    code = job.error.get("code") if job.status == JobStatus.FAILED and job.error else None
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
    adapter = trained_adapter(settings, job)
    reason = audit.check_reason(reason, audit.LOOSENING_REASON_CHARS)  # the gate's decision is overruled
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


def override_change(job: Job) -> str:
    """The override in words, as the confirmation names it."""
    code = blocked_code(job) or "not blocked"
    return f"release the adapter of {job.id} that the safety gate blocked ({code})"


@dataclass(frozen=True)
class PolicyChange:
    knob: str
    before: JsonValue
    after: JsonValue
    looser: bool

    def __str__(self) -> str:
        direction = "looser" if self.looser else "tighter"
        return f"{self.knob} {_shown(self.before)} → {_shown(self.after)} ({direction})"


def _shown(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_shown(v)}" for k, v in sorted(value.items())) + "}"
    return str(value)


def is_looser(knob: str, before: object, after: object) -> bool:
    """Whether moving ``knob`` from ``before`` to ``after`` loosens the policy (``models.policy``'s order)."""
    return not KNOBS[knob].at_least_as_strict(after, before)


def policy_changes(
    settings: Settings, org: Organization, updates: Mapping[str, JsonValue]
) -> tuple[JsonObject, list[PolicyChange]]:
    """The organization's stored policy with ``updates`` (an admin's, JSON) applied, and each knob that
    changes with its direction; ``InvalidConfig`` names an unknown knob or a value out of its range (nothing
    is changed)."""
    unknown = sorted(set(updates) - set(KNOBS))
    if unknown:
        raise InvalidConfig(f"policy.{unknown[0]}: unknown safety setting", param=f"policy.{unknown[0]}")
    before: Mapping[str, object] = org_policy(settings, org.policy)
    merged: JsonObject = {**(org.policy or {}), **updates}
    after: Mapping[str, object] = org_policy(settings, merged)  # validates every knob within its range
    changes = [
        PolicyChange(k, jsonable(before[k]), jsonable(after[k]), is_looser(k, before[k], after[k]))
        for k in KNOBS
        if before[k] != after[k]
    ]
    return merged, changes


def _changed_knobs(details: JsonObject) -> list[tuple[str, JsonValue, JsonValue]]:
    """A policy change's audit details as (knob, from, to)."""
    changed = details.get("changed")
    if not isinstance(changed, Mapping):
        return []
    return [
        (knob, change.get("from"), change.get("to"))
        for knob, change in changed.items()
        if isinstance(change, Mapping)
    ]


def describe_entry(entry: AuditEntry) -> str:
    """An audit entry's change in words (the console's pages, ``tunegate audit``): a policy change names each
    knob, from, to, and whether it loosened or tightened the policy."""
    details = entry.details or {}
    if entry.action == audit.SET_POLICY:
        parts = []
        for knob, before, after in _changed_knobs(details):
            try:
                parts.append(str(PolicyChange(knob, before, after, is_looser(knob, before, after))))
            except (KeyError, TypeError, ValueError):  # a knob since removed, or a value of another kind
                parts.append(f"{knob} {_shown(before)} → {_shown(after)}")
        return "; ".join(parts) or "policy changed"
    if entry.action == audit.OVERRIDE:
        return f"released the adapter the safety gate blocked ({details.get('blocked', 'blocked')})"
    if entry.action == audit.REVOKE:
        return "revoked the released adapter"
    if entry.action in (audit.ADD_WEBHOOK, audit.DELETE_WEBHOOK):
        verb = "added" if entry.action == audit.ADD_WEBHOOK else "deleted"
        return f"{verb} webhook endpoint {details.get('url', '')}".rstrip()
    return entry.action.replace("_", " ")


def set_org_policy(
    session: Session,
    admin: Admin,
    org: Organization,
    updates: Mapping[str, JsonValue],
    reason: str,
    settings: Settings,
) -> AuditEntry:
    """Set safety knobs of ``org`` (the floor its jobs may only tighten); ``InvalidConfig`` names bad ones.
    Loosening any knob needs a reason of ``audit.LOOSENING_REASON_CHARS`` characters."""
    merged, changes = policy_changes(settings, org, updates)
    if not changes:
        raise InvalidConfig("the policy is unchanged", param="policy")
    loosening = any(c.looser for c in changes)
    reason = audit.check_reason(reason, audit.LOOSENING_REASON_CHARS if loosening else audit.MIN_REASON_CHARS)
    changed = {c.knob: {"from": c.before, "to": c.after} for c in changes}
    org.policy = merged
    return audit.append(session, admin, audit.SET_POLICY, reason, org_id=org.id, details={"changed": changed})


def add_webhook(
    session: Session, admin: Admin, org: Organization, url: str, events: list[str], reason: str
) -> WebhookEndpoint:
    """Register a webhook endpoint for ``org`` on its behalf (the caller shows the secret once)."""
    reason = audit.check_reason(reason)
    row = webhooks.create_endpoint(session, org_id=org.id, url=url, events=events)
    details: JsonObject = {"endpoint": row.id, "url": row.url, "events": list(row.events)}
    audit.append(session, admin, audit.ADD_WEBHOOK, reason, org_id=org.id, details=details)
    return row


def delete_webhook(session: Session, admin: Admin, org: Organization, endpoint_id: str, reason: str) -> None:
    """Remove one of ``org``'s webhook endpoints (and its delivery log)."""
    reason = audit.check_reason(reason)
    row = webhooks.get_endpoint(session, org_id=org.id, endpoint_id=endpoint_id)
    details = {"endpoint": row.id, "url": row.url}
    webhooks.delete_endpoint(session, org_id=org.id, endpoint_id=endpoint_id)
    audit.append(session, admin, audit.DELETE_WEBHOOK, reason, org_id=org.id, details=details)
