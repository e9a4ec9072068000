"""Moderator actions on the models: each needs a reason and writes one audit entry with the change; the
override is the only way out of 'failed', and only for a job the gate blocked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect
from sqlalchemy.orm import Session

from models import audit
from models.db import session_scope
from models.jobs import JobStatus, transition
from models.keys import Admin, create_admin_key, get_or_create_org
from models.moderation import override_release, revoke_adapter, set_org_policy
from models.tables import AuditEntry, Job
from tunegate.errors import Conflict, InvalidConfig, InvalidRequest, NotFound
from tunegate.settings import get_settings


def _job(session: Session, *, code: str | None = "safety_eval_failed", adapter: bool = True) -> Job:
    org = get_or_create_org(session, "acme")
    job = Job(org_id=org.id, model="m", training_file="file-x", hyperparameters={}, method={}, safety={})
    session.add(job)
    session.flush()
    for status in (JobStatus.QUEUED, JobStatus.RUNNING):
        transition(session, job, status, message=status.value)
    transition(session, job, JobStatus.FAILED, message="blocked", error={"code": code, "message": "no"})
    if adapter:  # the gate records the adapter it judged, released or not
        path = get_settings().jobs_path / job.id / "train" / "adapter"
        path.mkdir(parents=True)
        job.adapter_path = str(path)
    return job


def test_override_releases_a_blocked_job_with_an_event_and_an_entry(migrated_home: Path) -> None:
    with session_scope() as s:
        admin = create_admin_key(s, "Dana")
        who = Admin(key_id=admin.key_id, name="Dana")
        job = _job(s)
        with pytest.raises(InvalidRequest, match="reason"):
            override_release(s, who, job, "ok", get_settings())
        with pytest.raises(InvalidRequest, match="at least 20 characters"):  # issue 28: an override loosens
            override_release(s, who, job, "reviewed by hand", get_settings())
        entry = override_release(s, who, job, "reviewed by hand: a locksmith course", get_settings())
        assert job.status == "succeeded" and job.released and job.error is None and job.fine_tuned_model
        assert (entry.actor_name, entry.action, entry.reason) == (
            "Dana",
            "override_release",
            "reviewed by hand: a locksmith course",
        )
        assert entry.details == {"blocked": "safety_eval_failed"}
        with pytest.raises(Conflict):
            override_release(s, who, job, "once more please", get_settings())
        revoke_adapter(s, who, job, "complaint received")
        assert job.revoked_at is not None
        with pytest.raises(Conflict, match="already revoked"):
            revoke_adapter(s, who, job, "complaint received")
        assert [e.action for e in audit.for_job(s, job.id)] == ["override_release", "revoke_adapter"]


def test_only_gate_blocks_with_an_adapter_can_be_overridden(migrated_home: Path) -> None:
    who = Admin(key_id="key-1", name="Dana")
    with session_scope() as s:
        with pytest.raises(Conflict, match="not blocked"):
            override_release(s, who, _job(s, code="invalid_file"), "it is fine", get_settings())
        with pytest.raises(NotFound, match="no trained adapter"):
            override_release(s, who, _job(s, adapter=False), "it is fine", get_settings())
        job = _job(s)
        with pytest.raises(Conflict):  # without the moderator's flag, failed stays final
            transition(s, job, JobStatus.SUCCEEDED, message="sneaky")


def test_policy_changes_within_bounds_only(migrated_home: Path) -> None:
    who = Admin(key_id="key-1", name="Dana")
    with session_scope() as s:
        org = get_or_create_org(s, "acme")
        with pytest.raises(InvalidConfig, match="gate_delta"):
            set_org_policy(s, who, org, {"gate_delta": 1.5}, "too loose", get_settings())
        with pytest.raises(InvalidConfig, match="unknown"):
            set_org_policy(s, who, org, {"root": True}, "not a knob", get_settings())
        with pytest.raises(InvalidConfig, match="unchanged"):
            set_org_policy(
                s, who, org, {"gate_delta": get_settings().gate_delta}, "same value", get_settings()
            )
        with pytest.raises(InvalidRequest, match="at least 20 characters"):  # issue 28: 0.05 -> 0.1 loosens
            set_org_policy(s, who, org, {"gate_delta": 0.1}, "repeat offender", get_settings())
        assert org.policy in (None, {})
        entry = set_org_policy(
            s, who, org, {"gate_delta": 0.1}, "pilot agreed with their legal team", get_settings()
        )
        assert org.policy == {"gate_delta": 0.1}
        assert entry.details == {"changed": {"gate_delta": {"from": get_settings().gate_delta, "to": 0.1}}}
        assert audit.for_org(s, org.id)[0].id == entry.id


def test_the_audit_log_has_no_update_or_delete_path() -> None:
    public = {name for name in vars(audit) if not name.startswith("_")}
    assert not {n for n in public if any(w in n for w in ("update", "delete", "remove", "edit"))}
    assert {c.key for c in inspect(AuditEntry).columns} >= {"actor_name", "action", "reason", "created_at"}
    with pytest.raises(ValueError, match="audit action"):
        audit.append(None, None, "delete_everything", "because")  # type: ignore[arg-type]
