"""What the moderator console and the HTML report read: a job's report with the examples' text, its header
and timeline, and the review queue (jobs across organizations that were flagged, blocked, repaired, await
review, failed or were cancelled).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TypedDict

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models import audit
from models.jobs import JobStatus
from models.moderation import blocked_code
from models.policy import policy_json
from models.tables import AuditEntry, File, Job, JobEvent, Organization
from tunegate.conversation import ChatMessageJSON
from tunegate.errors import InvalidFile, NotFound
from tunegate.jsontypes import JsonObject
from tunegate.report import SafetyReport
from tunegate.reporting.details import flagged_lines, read_examples, with_details
from tunegate.reporting.render import AuditLine, JobContext
from tunegate.settings import Settings, get_settings
from tunegate.storage import ObjectMissing, artifact_version, get_storage, is_stored, open_artifact

QUEUE_SCAN_LIMIT = 5000  # newest jobs with a report looked at per queue page (older ones: narrow by date)
STATES = {
    "blocked": "blocked by the gate",
    "flagged": "training data flagged",
    "repaired": "examples dropped or down-weighted",
    "review": "awaiting review",
    "overridden": "released by override",
    "revoked": "adapter revoked",
    "failed": "failed (not by the gate)",
    "cancelled": "cancelled",
}
# the queue shows these jobs even when they have no report (they ended before the gate)
ENDED_EARLY = (JobStatus.FAILED.value, JobStatus.CANCELLED.value)


def report_ref(job: Job) -> str | None:
    """Where the job's report.json is: a local path, or its key in the object store (None: no report)."""
    if not job.report_path:
        return None
    ref = job.report_path
    if not is_stored(ref) and Path(ref).is_dir():  # rows written when the report's directory was recorded
        ref = str(Path(ref) / "report.json")
    return ref


def read_report(ref: str, settings: Settings) -> SafetyReport:
    """The report (``ObjectMissing`` when its file or object is gone; ``RecordError`` when this version
    cannot read it); one written before ``schema_version`` is upgraded (``tunegate.report.upgrade``)."""
    with open_artifact(settings, ref) as fh:
        return SafetyReport.from_dict(json.loads(fh.read().decode("utf-8")))


@dataclass(frozen=True)
class ReportSummary:
    """The few report facts the queue filters on."""

    code: str | None  # the gate's decision code (a job without a report: its error's code, if any)
    flagged: bool  # the screen flagged the training data
    repaired: bool  # examples were dropped or down-weighted


@lru_cache(maxsize=4096)
def _summary(ref: str, version: str) -> ReportSummary:
    """The report's ``ReportSummary``, cached per report version (a local file's mtime; an object in the
    store is published once under its job's key, so its key is its version)."""
    del version  # part of the cache key only: a rewritten report is read again
    report = read_report(ref, get_settings())
    mitigation, verdict = report.mitigation, report.scoring.summary.verdict
    return ReportSummary(
        code=report.decision.code,
        flagged=verdict is not None and verdict.flagged,
        repaired=bool(mitigation.n_dropped or mitigation.n_downweighted),
    )


def report_summary(job: Job) -> ReportSummary:
    ref = report_ref(job)
    none = ReportSummary(code=job.error.get("code") if job.error else None, flagged=False, repaired=False)
    if ref is None:
        return none
    try:
        version = "" if is_stored(ref) else artifact_version(get_settings(), ref)
        return none if version is None else _summary(ref, version)
    except (NotFound, OSError, ValueError):  # gone or unreadable: the queue shows the row's own code
        return none


def job_states(job: Job, summary: ReportSummary, actions: set[str]) -> list[str]:
    """The queue's tags of one job (empty: nothing for a moderator to look at)."""
    states = []
    if blocked_code(job):
        states.append("blocked")
    if summary.flagged:
        states.append("flagged")
    if summary.repaired:
        states.append("repaired")
    if (blocked_code(job) or summary.flagged) and not actions:
        states.append("review")
    if audit.OVERRIDE in actions:
        states.append("overridden")
    if job.revoked_at is not None:
        states.append("revoked")
    if job.status == JobStatus.FAILED and not blocked_code(job):
        states.append("failed")
    if job.status == JobStatus.CANCELLED:
        states.append("cancelled")
    return states


def decision_code(job: Job, summary: ReportSummary) -> str:
    """The queue's decision column: the gate's code, ``released``, or how the job otherwise ended (its
    error's code, ``cancelled``) or where it is (``running`` ...)."""
    if summary.code:
        return summary.code
    if job.status == JobStatus.SUCCEEDED:
        return "released"
    if job.status == JobStatus.FAILED:
        return str((job.error.get("code") if job.error else None) or "failed")
    return str(job.status)


@dataclass(frozen=True)
class QueueFilter:
    org_id: str | None = None
    model: str | None = None
    state: str | None = None  # one of STATES
    code: str | None = None  # a decision code (``decision_code``), or "released"
    status: str | None = None  # the job's status (``JobStatus``): every job of it, flagged or not
    since: date | None = None
    until: date | None = None  # inclusive


class QueueRow(TypedDict):
    """One job of the review queue, as its page shows it."""

    id: str
    org: str
    model: str
    created_at: datetime
    status: str
    code: str  # ``decision_code``
    states: list[str]  # ``job_states``


@dataclass
class QueuePage:
    rows: list[QueueRow] = field(default_factory=list)
    page: int = 1
    pages: int = 1
    total: int = 0


def queue(session: Session, flt: QueueFilter, *, page: int, per_page: int) -> QueuePage:
    """Jobs needing a moderator's eye (a report to review, or a job that failed or was cancelled), newest
    first, filtered and paginated; with ``flt.status``, every job of that status."""
    stmt = select(Job, Organization.name).join(Organization, Organization.id == Job.org_id)
    if flt.status:
        stmt = stmt.where(Job.status == flt.status)
    else:
        stmt = stmt.where(or_(Job.report_path.is_not(None), Job.status.in_(ENDED_EARLY)))
    if flt.org_id:
        stmt = stmt.where(Job.org_id == flt.org_id)
    if flt.model:
        stmt = stmt.where(Job.model == flt.model)
    if flt.since:
        stmt = stmt.where(Job.created_at >= datetime.combine(flt.since, time(), UTC))
    if flt.until:
        stmt = stmt.where(Job.created_at < datetime.combine(flt.until + timedelta(days=1), time(), UTC))
    stmt = stmt.order_by(Job.created_at.desc(), Job.id.desc()).limit(QUEUE_SCAN_LIMIT)
    found = list(session.execute(stmt).tuples())
    acted = _actions(session, [job.id for job, _ in found])
    rows: list[QueueRow] = []
    for job, org_name in found:
        summary = report_summary(job)
        states = job_states(job, summary, acted.get(job.id, set()))
        if (not states and not flt.status) or (flt.state and flt.state not in states):
            continue
        code = decision_code(job, summary)
        if flt.code and flt.code != code:
            continue
        rows.append(
            {
                "id": job.id,
                "org": org_name,
                "model": job.model,
                "created_at": job.created_at,
                "status": job.status,
                "code": code,
                "states": states,
            }
        )
    pages = max(1, -(-len(rows) // per_page))
    page = min(max(1, page), pages)
    return QueuePage(rows[(page - 1) * per_page : page * per_page], page, pages, len(rows))


def _actions(session: Session, job_ids: list[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for start in range(0, len(job_ids), 500):
        chunk = job_ids[start : start + 500]
        stmt = select(AuditEntry.job_id, AuditEntry.action).where(AuditEntry.job_id.in_(chunk))
        for job_id, action in session.execute(stmt).tuples():
            out.setdefault(str(job_id), set()).add(action)
    return out


def training_texts(
    session: Session, job: Job, lines: set[int], settings: Settings
) -> dict[int, list[ChatMessageJSON]]:
    """The messages of ``lines`` of the job's training file, read through storage ({} when it is gone)."""
    row = session.get(File, job.training_file)
    if not lines or row is None or row.org_id != job.org_id:
        return {}
    try:
        with get_storage(settings).open(row.storage_key) as fh:
            return read_examples(fh, lines)
    except (NotFound, InvalidFile, OSError):  # deleted or unreadable: the report says the text is missing
        return {}


def job_report(job: Job, settings: Settings) -> SafetyReport:
    """The job's report.json as the gate wrote it; ``NotFound`` (``report_not_ready``) when there is none."""
    ref = report_ref(job)
    try:
        if ref is not None:
            return read_report(ref, settings)
    except ObjectMissing:
        pass  # gone: answered as not ready, like a report never written
    raise NotFound(
        f"job {job.id} has no safety report yet (status {job.status}, stage {job.stage})",
        param="fine_tuning_job_id",
        code="report_not_ready",
    )


def full_report(session: Session, job: Job, settings: Settings) -> SafetyReport:
    """The job's report.json (the gate puts the flagged examples' text and the mitigation log in it; the text
    of a report written without it is read from the training file); ``NotFound`` if none."""
    report = job_report(job, settings)
    texts = training_texts(session, job, flagged_lines(report), settings)
    return with_details(report, texts=texts)


def job_context(session: Session, job: Job, entries: list[AuditEntry]) -> JobContext:
    """The job as the report templates read it."""
    org = session.get(Organization, job.org_id)
    file = session.get(File, job.training_file)
    events = session.scalars(select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq))
    override = next((e.details.get("blocked") for e in entries if e.action == audit.OVERRIDE), None)
    return {
        "id": job.id,
        "org": org.name if org else job.org_id,
        "org_id": job.org_id,
        "model": job.model,
        "status": job.status,
        "fine_tuned_model": job.fine_tuned_model if job.released else None,
        "training_file": job.training_file,
        "training_filename": file.filename if file else None,
        "n_examples": file.n_examples if file else None,
        "validation_file": job.validation_file,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "revoked_at": job.revoked_at,
        "override": override,
        "policy": policy_json(job.safety or {}),
        "events": [
            {"at": e.created_at, "stage": _stage(e.data), "level": e.level, "message": e.message}
            for e in events
        ],
    }


def _stage(data: JsonObject | None) -> str | None:
    """The stage an event's data names (None: none)."""
    stage = (data or {}).get("stage")
    return stage if isinstance(stage, str) else None


def audit_line(entry: AuditEntry) -> AuditLine:
    """An audit entry as the report's audit section and the console's pages read it."""
    return {
        "id": entry.id,
        "at": entry.created_at,
        "who": entry.actor_name,
        "action": entry.action,
        "reason": entry.reason,
        "job_id": entry.job_id,
        "details": entry.details,
    }
