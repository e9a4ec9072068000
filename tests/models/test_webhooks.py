"""The webhook outbox: what ``emit`` and ``transition`` write, once, and what is enqueued after commit."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from models import webhooks
from models.db import session_scope
from models.jobs import JobStatus, transition
from models.tables import Job, Organization, WebhookDelivery, WebhookEvent
from tests.utils.broker import queued_tasks
from tunegate.netguard import AddressRefused
from tunegate.settings import get_settings, reset_settings


@pytest.fixture(autouse=True)
def _loopback_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoints below point at 127.0.0.1, which registration refuses unless the provider allows it."""
    monkeypatch.setenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS", '["127.0.0.1/32"]')
    reset_settings()


def _org_and_job() -> tuple[str, str]:
    with session_scope() as s:
        org = Organization(name=f"o-{uuid.uuid4().hex[:12]}", policy={})  # id(s) repeats: names clashed
        s.add(org)
        s.flush()
        job = Job(org_id=org.id, model="m", training_file="file-x")
        s.add(job)
        s.flush()
        return org.id, job.id


def _endpoint(org_id: str, *events: str) -> str:
    with session_scope() as s:
        return webhooks.create_endpoint(s, org_id=org_id, url="http://127.0.0.1:9/h", events=list(events)).id


def _rows() -> list[tuple[WebhookEvent, WebhookDelivery]]:
    with session_scope() as s:
        stmt = select(WebhookEvent, WebhookDelivery).join(
            WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id
        )
        return [(e, d) for e, d in s.execute(stmt.order_by(WebhookDelivery.endpoint_id))]


def _messages() -> list[list[str]]:
    tasks = queued_tasks()
    assert all(name == "tunegate.webhook.deliver" for name, _ in tasks), tasks
    return [args for _, args in tasks]


def _move(job_id: str, *statuses: JobStatus) -> None:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for status in statuses:
            transition(s, job, status, message=status.value)


def test_a_terminal_status_writes_one_event_per_subscribed_endpoint(migrated_home: Path) -> None:
    org_id, job_id = _org_and_job()
    a = _endpoint(org_id, "fine_tuning.job.succeeded", "fine_tuning.job.failed")
    b = _endpoint(org_id, "fine_tuning.job.succeeded")
    _endpoint(org_id, "fine_tuning.job.cancelled")  # not subscribed
    other_org, _ = _org_and_job()
    _endpoint(other_org, "fine_tuning.job.succeeded")  # another tenant's
    _move(job_id, JobStatus.QUEUED, JobStatus.RUNNING)
    assert _rows() == [] and _messages() == []  # only terminal statuses are events
    _move(job_id, JobStatus.SUCCEEDED)
    rows = _rows()
    assert sorted(d.endpoint_id for _, d in rows) == sorted([a, b])
    assert len({e.id for e, _ in rows}) == 1  # one event (one webhook-id) to both endpoints
    event = rows[0][0]
    body = json.loads(event.body)
    assert body == {
        "object": "event",
        "id": event.id,
        "type": "fine_tuning.job.succeeded",
        "created_at": body["created_at"],
        "data": {"id": job_id},
    }
    assert isinstance(body["created_at"], int)
    assert all(d.status == "pending" and d.attempts == 0 for _, d in rows)
    assert sorted(_messages()) == sorted([[d.id] for _, d in rows])


def test_a_rolled_back_transition_writes_and_enqueues_nothing(migrated_home: Path) -> None:
    org_id, job_id = _org_and_job()
    _endpoint(org_id, "fine_tuning.job.failed", "fine_tuning.job.cancelled")
    with pytest.raises(RuntimeError), session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobStatus.FAILED, message="failed")
        raise RuntimeError("the caller's transaction fails after the transition")
    assert _rows() == [] and _messages() == []
    _move(job_id, JobStatus.CANCELLED)  # the same job, later, committed
    [(event, delivery)] = _rows()
    assert event.type == "fine_tuning.job.cancelled"
    assert _messages() == [[delivery.id]]


def test_emit_writes_each_event_type_once_per_job_unless_keyed(migrated_home: Path) -> None:
    org_id, job_id = _org_and_job()
    _endpoint(org_id, "fine_tuning.job.flagged", "fine_tuning.job.overridden")
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        first = webhooks.emit(s, job, "fine_tuning.job.flagged")
        assert first is not None and first.startswith("evt_")
        assert webhooks.emit(s, job, "fine_tuning.job.flagged") is None  # a redelivered task
        assert webhooks.emit(s, job, "fine_tuning.job.repaired") is None  # nobody subscribed
        one = webhooks.emit(s, job, "fine_tuning.job.overridden", dedupe_key="override:1")
        two = webhooks.emit(s, job, "fine_tuning.job.overridden", dedupe_key="override:2")
        assert None not in (one, two) and one != two
        with pytest.raises(ValueError, match="unknown webhook event type"):
            webhooks.emit(s, job, "fine_tuning.job.exploded")
    assert sorted(e.type for e, _ in _rows()) == [
        "fine_tuning.job.flagged",
        "fine_tuning.job.overridden",
        "fine_tuning.job.overridden",
    ]
    assert len(_messages()) == 3


def test_the_stage_specs_and_an_override_emit_flagged_repaired_and_overridden(migrated_home: Path) -> None:
    """The score spec's outcome emits ``flagged``, the mitigate spec's ``repaired`` (lines dropped or
    down-weighted), and a moderator's override ``overridden``: each once, in the caller's transaction."""
    from models.keys import Admin, create_admin_key
    from models.moderation import override_release
    from worker.stages import mitigate, score

    org_id, job_id = _org_and_job()
    kinds = ("fine_tuning.job.flagged", "fine_tuning.job.repaired", "fine_tuning.job.overridden")
    _endpoint(org_id, *kinds)
    flagged = score.ScoreResult(3, score.Verdict(True, "a heavy top tail"), "m", "fp")
    repaired = mitigate.MitigateResult("t.jsonl", 3, 1, 0, 0, 2, 4)
    adapter = migrated_home / "adapter"
    adapter.mkdir()
    for _ in range(2):  # a redelivered stage re-applies its outcome: still one event each
        with session_scope() as s:
            job = s.get(Job, job_id)
            assert job is not None
            score.apply(s, job, flagged)
            mitigate.apply(s, job, repaired)
    with session_scope() as s:
        staff = create_admin_key(s, "Dana")
        job = s.get(Job, job_id)
        assert job is not None
        for status in (JobStatus.QUEUED, JobStatus.RUNNING):
            transition(s, job, status, message=status.value)
        error = {"code": "safety_eval_failed", "message": "no"}
        transition(s, job, JobStatus.FAILED, message="blocked", error=error)
        job.adapter_path = str(adapter)
        override_release(
            s, Admin(staff.key_id, "Dana"), job, "reviewed by hand: a locksmith course", get_settings()
        )
    types = [e.type for e, _ in _rows()]
    assert sorted(types) == sorted(kinds)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/h", "http://169.254.169.254/latest/meta-data/"])
def test_the_consoles_add_webhook_checks_the_address_too(
    migrated_home: Path, monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    """Issue 28: the address policy was checked in the API's route only, so a moderator adding an endpoint
    for an organization (``moderation.add_webhook``) registered an internal URL. The check now lives where
    every registration goes through it; nothing is stored, nothing is audited."""
    from models.keys import Admin, create_admin_key
    from models.moderation import add_webhook
    from models.tables import AuditEntry, WebhookEndpoint

    monkeypatch.delenv("TUNEGATE_WEBHOOK_ALLOWED_TARGETS")
    reset_settings()
    org_id, _ = _org_and_job()
    with pytest.raises(AddressRefused) as info, session_scope() as s:
        staff = create_admin_key(s, "Dana")
        org = s.get(Organization, org_id)
        assert org is not None
        add_webhook(s, Admin(staff.key_id, "Dana"), org, url, ["fine_tuning.job.failed"], "set up for them")
    assert info.value.param == "url" and info.value.code == "webhook_url_not_allowed"
    with session_scope() as s:
        assert s.scalars(select(WebhookEndpoint)).all() == []
        assert s.scalars(select(AuditEntry)).all() == []
