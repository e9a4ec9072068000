"""Safety scans for the routes (``api/routes/safety_scans.py``): create one (check the file and the model,
store the row with the organization's effective policy, send the task to the scoring queue), render it, and
page through its records (the ``records.jsonl`` the worker published, ``worker/scan.py``).

The tenancy rules are the Files API's: a file or scan of another organization answers exactly like a
missing one (404)."""

from __future__ import annotations

import json
import logging
from typing import Literal

from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from api.schemas import (
    SafetyScanCreateIn,
    SafetyScanErrorOut,
    SafetyScanOut,
    SafetyScanRecordOut,
    SafetyScanVerdictOut,
)
from api.services.crud import get_file
from models import scans
from models.base import unix
from models.policy import org_policy
from models.tables import File, Organization, SafetyScan
from tunegate import queue
from tunegate.errors import Conflict, ModelError, NotFound, TransientError, Unprocessable
from tunegate.model_cache import missing_reason
from tunegate.records import ScanRecord
from tunegate.settings import Settings
from tunegate.storage import ObjectMissing, open_artifact

log = logging.getLogger(__name__)
Order = Literal["line", "risk"]


def _scannable_file(session: Session, org: Organization, file_id: str) -> File:
    """The organization's file, a checked fine-tuning file (what a job could train on)."""
    row = get_file(session, org=org, file_id=file_id)
    if row.purpose != "fine-tune":
        raise Unprocessable(
            f"file {file_id} has purpose {row.purpose!r}; only 'fine-tune' files are scanned",
            param="file_id",
            code="invalid_file_purpose",
        )
    if row.status != "processed":
        detail = f": {row.status_details}" if row.status == "error" and row.status_details else ""
        code = "file_not_ready" if row.status == "uploaded" else "invalid_file"
        raise Unprocessable(
            f"file {file_id} is {row.status!r}, not 'processed'{detail}", param="file_id", code=code
        )
    return row


def _check_model(model: str, settings: Settings) -> None:
    """The checks a job's model passes (``api/services/job_create.py``): offered here, and prepared."""
    if model not in settings.models:
        known = ", ".join(sorted(settings.models))
        raise Unprocessable(
            f"model {model!r} is not a base model offered here (available: {known})",
            param="model",
            code="model_not_available",
        )
    why = missing_reason(model, settings)
    if why is not None:
        raise ModelError(f"model {why}", param="model", code="model_not_available")


def create_scan(
    session: Session, *, org: Organization, file_id: str, body: SafetyScanCreateIn, settings: Settings
) -> SafetyScan:
    """Store a queued scan of the file for ``body.model`` under the organization's policy, then send it to
    the scoring queue. A queue that cannot take the task fails the scan (503: create it again)."""
    row = _scannable_file(session, org, file_id)
    _check_model(body.model, settings)
    scan = scans.create(
        session, org_id=org.id, file_id=row.id, model=body.model, policy=org_policy(settings, org.policy)
    )
    session.commit()
    try:
        queue.enqueue(queue.SAFETY_SCAN, scan.id)
    except (KombuError, ConnectionError) as exc:
        log.error("safety scan %s could not be queued: %s", scan.id, exc)
        message = "the job queue is unavailable, so the safety scan was not started; create it again shortly"
        scans.fail(session, scan.id, token=None, error={"code": "queue_unavailable", "message": message})
        session.commit()
        raise TransientError(message) from exc
    return scan


def scan_out(row: SafetyScan) -> SafetyScanOut:
    failed = row.status == "failed" and row.error
    return SafetyScanOut(
        id=row.id,
        status=row.status,  # type: ignore[arg-type]
        file_id=row.file_id,
        model=row.model,
        verdict=SafetyScanVerdictOut(**row.verdict) if row.status == "completed" and row.verdict else None,
        summary=row.summary if row.status == "completed" else None,
        mitigation=row.mitigation if row.status == "completed" else None,
        created_at=unix(row.created_at) or 0,
        completed_at=unix(row.completed_at),
        error=SafetyScanErrorOut.model_validate({"param": None, **(row.error or {})}) if failed else None,
        progress=float(row.progress or 0.0),
    )


def record_id(line: int) -> str:
    return f"line-{line}"


def records_page(
    settings: Settings, row: SafetyScan, *, after: str | None, limit: int, order: Order
) -> tuple[list[SafetyScanRecordOut], bool]:
    """A page of the scan's records in file order (``line``) or riskiest first (``risk``); ``after`` is the
    id of the last record the client saw."""
    if row.status != "completed" or not row.records_ref:
        raise Conflict(
            f"safety scan {row.id} is {row.status}; its records exist once it has completed",
            param="scan_id",
            code="scan_not_completed",
        )
    records = _read(settings, row)
    if order == "risk":
        records.sort(key=lambda r: (r.rank, r.line))
    start = 0
    if after:
        ids = [record_id(r.line) for r in records]
        if after not in ids:
            raise NotFound(f"No such record of safety scan {row.id}: {after}", param="after")
        start = ids.index(after) + 1
    page = records[start : start + limit]
    return [record_out(r) for r in page], start + limit < len(records)


def record_out(r: ScanRecord) -> SafetyScanRecordOut:
    """A scan record as the API returns it (its ``why`` is not shown: the reasons say it in words)."""
    return SafetyScanRecordOut(
        id=record_id(r.line),
        line=r.line,
        rank=r.rank,
        risk=r.risk,
        percentiles=dict(r.percentiles),
        reasons=list(r.reasons),
        text=r.text,
        action=r.action,
    )


def _read(settings: Settings, row: SafetyScan) -> list[ScanRecord]:
    """The scan's published ``records.jsonl`` (the JSON boundary: each line through ``ScanRecord``)."""
    try:
        with open_artifact(settings, str(row.records_ref)) as fh:
            text = fh.read().decode("utf-8")
    except ObjectMissing:
        log.error("safety scan %s: its records file is missing", row.id)
        raise NotFound(
            f"the records of safety scan {row.id} are missing; scan the file again",
            param="scan_id",
            code="records_missing",
        ) from None
    return [ScanRecord.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]
