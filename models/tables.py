"""The tables: organizations and keys, files and multipart uploads, fine-tuning jobs, their events and
checkpoints, webhooks.

Every row belongs to one organization; lookups always filter by ``org_id`` so another tenant's id behaves
exactly like a missing one. Timestamps are timezone-aware UTC; the API renders them as unix seconds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.sql.expression import false

from models.base import Base, UTCDateTime, new_id, utcnow
from models.policy import Policy
from models.records import Hyperparameters, JobMethod, RepairSummary, ScanVerdict
from tunegate.errors import JobError
from tunegate.jsontypes import JsonObject, JsonValue


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("org-"))
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # what an admin stored (free-form JSON, checked when read: models/policy.py org_policy, _org_limit)
    policy: Mapped[JsonObject] = mapped_column(JSON, default=dict)
    rate_limit_per_minute: Mapped[int | None] = mapped_column(Integer)  # None: the provider default
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # the dispatcher's last admission of one of its jobs: its last turn (models/dispatch.py); None: never
    last_admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("key-"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex; never the key itself
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, for display in `keys list`
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # "org": an organization's key for /v1; "admin": provider staff (the console, /metrics), never /v1
    role: Mapped[str] = mapped_column(String(16), default="org", server_default="org")
    name: Mapped[str | None] = mapped_column(String(128))  # an admin key's holder, as audit entries name them


class File(Base):
    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("file-"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(16), default="uploaded")  # uploaded | processed | error
    status_details: Mapped[str | None] = mapped_column(Text)
    n_examples: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # files.create(expires_after=...): the worker's reaper deletes the file once this has passed
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_org_id_id", "org_id", "id"),
        UniqueConstraint("org_id", "idempotency_key", name="uq_jobs_org_id_idempotency_key"),
        # the dispatcher's reads (models/dispatch.py): admitted or waiting jobs by status
        Index("ix_jobs_status_admitted_at", "status", "admitted_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftjob-"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32), default="validating_files")  # models.jobs.JobStatus
    hyperparameters: Mapped[Hyperparameters] = mapped_column(JSON, default=dict)
    method: Mapped[JobMethod] = mapped_column(JSON, default=dict)
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    metadata_: Mapped[dict[str, str] | None] = mapped_column("metadata", JSON)
    # the effective policy (models/policy.py) as of the job's creation: a knob added since is absent
    safety: Mapped[Policy] = mapped_column(JSON, default=dict)
    error: Mapped[JobError | None] = mapped_column(JSON)  # {code, message, param} only when failed
    fine_tuned_model: Mapped[str | None] = mapped_column(String(512))
    trained_tokens: Mapped[int | None] = mapped_column(Integer)
    result_files: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # jobs.pause of a running job: its worker pauses at the next checkpoint (models.jobs.pause)
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # worker bookkeeping
    stage: Mapped[str | None] = mapped_column(String(32))  # validate|score|mitigate|train|evaluate|gate
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    claimed_by: Mapped[str | None] = mapped_column(String(256))
    claim_token: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # when the dispatcher (models/dispatch.py) last handed the job to the workers; None while a new or resumed
    # job waits for its organization's turn (pausing clears it; a finished job keeps it)
    admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    artifacts_dir: Mapped[str | None] = mapped_column(String(1024))
    released: Mapped[bool] = mapped_column(Boolean, default=False)
    # the repair stage's record when the gate would have blocked the adapter for erosion (worker/stages/
    # repair.py): {"repaired", "method", "tried", "reason"}; None when there was nothing to repair
    repair: Mapped[RepairSummary | None] = mapped_column(JSON)
    # set when provider staff revoke a released adapter: no download, not in /v1/models (released stays)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    adapter_path: Mapped[str | None] = mapped_column(String(1024))
    report_path: Mapped[str | None] = mapped_column(String(1024))
    idempotency_key: Mapped[str | None] = mapped_column(String(256))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    event_count: Mapped[int] = mapped_column(Integer, default=0)  # last JobEvent.seq handed out
    # models.delete of the released fine-tune: gone from /v1/models, its adapter no longer downloadable
    model_deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_job_events_job_id_seq"),
        UniqueConstraint("job_id", "dedupe_key", name="uq_job_events_job_id_dedupe_key"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftevent-"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(8), default="info")  # info | warn | error
    type: Mapped[str] = mapped_column(String(16), default="message")  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[JsonObject] = mapped_column(JSON, default=dict)
    dedupe_key: Mapped[str | None] = mapped_column(String(256))


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step_number", name="uq_checkpoints_job_id_step_number"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ftckpt_"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, float]] = mapped_column(JSON, default=dict)
    path: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Upload(Base):
    """A file sent in parts (``/v1/uploads``): ``pending`` -> ``completing`` (assembling; shown as pending)
    -> ``completed`` (``file_id`` set) | back to ``pending`` on a failed completion; or ``cancelled`` /
    ``expired`` (parts removed)."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("upload_"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(512))
    purpose: Mapped[str] = mapped_column(String(32))
    mime_type: Mapped[str] = mapped_column(String(128))
    bytes: Mapped[int] = mapped_column(BigInteger)  # what the client declared; complete checks the parts
    status: Mapped[str] = mapped_column(String(16), default="pending")
    file_expires_after_s: Mapped[int | None] = mapped_column(Integer)  # the completed file's expires_after
    file_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class UploadPart(Base):
    __tablename__ = "upload_parts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("part_"))
    upload_id: Mapped[str] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookEndpoint(Base):
    """An organization's receiver of job events (``models/webhooks.py``). ``secret`` (``whsec_<base64>``)
    signs every delivery, so it is stored as is; the API shows it once, in the create (and rotate) answer."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_org_id_id", "org_id", "id"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("wh_"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON, default=list)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # issue 28 (the openai SDK's client.webhooks): the endpoint's name (None: shown as the URL's host), when
    # its configuration or secret last changed, and the secret a rotation keeps valid for 24 hours
    name: Mapped[str | None] = mapped_column(String(256))
    updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WebhookEvent(Base):
    """The outbox: one event of one job, written in the transaction that caused it. ``body`` is the exact
    JSON every delivery sends (signed afresh per attempt); ``id`` is the ``webhook-id`` of every attempt."""

    __tablename__ = "webhook_events"
    __table_args__ = (UniqueConstraint("job_id", "dedupe_key", name="uq_webhook_events_job_id_dedupe_key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("evt_"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    body: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One event to one endpoint, and its log: ``pending`` (due at ``next_attempt_at``) -> ``sending`` (an
    attempt holds it until ``locked_until``) -> ``delivered`` | back to ``pending`` | ``failed`` (gave up)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_id_endpoint_id"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("whdel_"))
    event_id: Mapped[str] = mapped_column(ForeignKey("webhook_events.id", ondelete="CASCADE"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|sending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when a task message was last sent
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AuditEntry(Base):
    """One moderator action: who, what, when, why. Append-only: nothing in tunegate updates or deletes a
    row (models/audit.py only inserts and reads)."""

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("audit-"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor_key_id: Mapped[str] = mapped_column(String(64))  # the admin key used (kept if the key is revoked)
    actor_name: Mapped[str] = mapped_column(String(128))  # the key holder's name at the time
    action: Mapped[str] = mapped_column(String(32))  # models.audit.ACTIONS
    reason: Mapped[str] = mapped_column(Text)
    org_id: Mapped[str | None] = mapped_column(String(64), index=True)  # no foreign keys: the log outlives
    job_id: Mapped[str | None] = mapped_column(String(64), index=True)  # the rows it talks about
    details: Mapped[JsonObject] = mapped_column(JSON, default=dict)


class ConsoleSession(Base):
    """A moderator console login (api/core/console_auth.py). The cookie carries a random token; the row is
    keyed by its sha256, so a copy of the table opens no session. Logout deletes the row, which ends the
    session for every copy of the cookie; an expired row is deleted at the next login."""

    __tablename__ = "console_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 hex of the cookie's token
    key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf: Mapped[str] = mapped_column(String(64))  # every POST of the session echoes it
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class SafetyScan(Base):
    """A pre-flight safety scan of one file for one base model (``POST /v1/files/{id}/safety_scan``): the
    score stage and the mitigate stage's plan, run on the scoring queue without training (``worker/scan.py``).
    ``queued`` -> ``running`` -> ``completed`` | ``failed`` (``models/scans.py``). A job on the same file and
    model reuses a completed scan's scores when its own ``score_key`` is the same (worker/stages/score.py)."""

    __tablename__ = "safety_scans"
    __table_args__ = (
        Index("ix_safety_scans_org_id_id", "org_id", "id"),
        Index("ix_safety_scans_org_id_file_id", "org_id", "file_id"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("ss-"))
    org_id: Mapped[str] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    file_id: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    policy: Mapped[Policy] = mapped_column(JSON, default=dict)  # the org's effective policy
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued | running | completed | failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    verdict: Mapped[ScanVerdict | None] = mapped_column(JSON)  # once completed
    # JSON objects (``JsonObject | None``, spelled out: SQLAlchemy evaluates the annotation, and the alias is
    # a string at run time)
    summary: Mapped[dict[str, JsonValue] | None] = mapped_column(JSON)
    mitigation: Mapped[dict[str, JsonValue] | None] = mapped_column(JSON)  # what the mitigate stage would do
    records_ref: Mapped[str | None] = mapped_column(String(1024))  # records.jsonl (path or object-store key)
    score_dir: Mapped[str | None] = mapped_column(String(1024))  # the score result a job may reuse
    # a digest of what decides the scores (file bytes, model fingerprint, score config; score.scores_key)
    score_key: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[JobError | None] = mapped_column(JSON)  # {code, message, param} only when failed
    claimed_by: Mapped[str | None] = mapped_column(String(256))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class WorkerPresence(Base):
    """One row per running Celery worker, refreshed every ``Settings.heartbeat_s`` (``models/presence.py``):
    which queues have a live worker, so a job waiting on a queue nobody serves says so (issue 28)."""

    __tablename__ = "worker_presence"

    name: Mapped[str] = mapped_column(String(256), primary_key=True)  # Celery's node name, e.g. embedded@host
    queues: Mapped[str] = mapped_column(String(256))  # comma-separated, as given to -Q
    # the worker's pipeline: each stage's queue (only the workers know the stages), {stage: queue}
    stage_queues: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
