"""Turning a staged file into a ``File`` row, shared by ``POST /v1/files`` (one request) and
``POST /v1/uploads/{id}/complete`` (parts assembled): the purpose, the filename, the upload-time checks of a
``fine-tune`` file (400 naming the line), the expiry policy, and the quota-checked commit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.schemas import UPLOAD_PURPOSES
from api.services import crud
from api.services.processing import check_upload
from models.policy import storage_quota
from models.tables import File
from tunegate.errors import InvalidFile, InvalidRequest, QuotaExceeded
from tunegate.settings import Settings
from tunegate.storage import Staged, Storage

MAX_FILENAME = 512
# files.create(expires_after=...): OpenAI's bounds (1 hour to 30 days), anchored at the file's creation
EXPIRES_AFTER_MIN_S = 3600
EXPIRES_AFTER_MAX_S = 30 * 24 * 3600


def checked_purpose(purpose: str | None) -> str:
    if purpose is None:
        raise InvalidRequest("the field 'purpose' is required", param="purpose", code="missing_purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported; use one of {', '.join(UPLOAD_PURPOSES)}",
            param="purpose",
            code="invalid_purpose",
        )
    return purpose


def clean_filename(name: str | None) -> str:
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    if len(cleaned) > MAX_FILENAME:
        raise InvalidRequest(
            f"filename is longer than {MAX_FILENAME} characters", param="file", code="invalid_filename"
        )
    return cleaned or "upload.jsonl"


def expires_after_seconds(anchor: Any, seconds: Any) -> int | None:
    """The seconds of an ``expires_after`` policy (None when neither part was sent); 400 naming the part."""
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest(
            f"expires_after.anchor must be 'created_at', got {anchor!r}",
            param="expires_after.anchor",
            code="invalid_expires_after",
        )
    try:
        value = int(seconds) if not isinstance(seconds, bool | float) else None
    except (TypeError, ValueError):
        value = None
    if value is None or not EXPIRES_AFTER_MIN_S <= value <= EXPIRES_AFTER_MAX_S:
        raise InvalidRequest(
            f"expires_after.seconds must be an integer from {EXPIRES_AFTER_MIN_S} to {EXPIRES_AFTER_MAX_S}, "
            f"got {seconds!r}",
            param="expires_after.seconds",
            code="invalid_expires_after",
        )
    return value


def expiry(created_at: datetime, seconds: int | None) -> datetime | None:
    return None if seconds is None else created_at + timedelta(seconds=seconds)


def checked_lines(
    storage: Storage, staged: Staged, filename: str, purpose: str, settings: Settings
) -> int | None:
    """Upload-time checks of a ``fine-tune`` file; the staged copy is discarded on any failure."""
    if purpose != "fine-tune":
        return None
    try:
        return check_upload(staged, filename, parse=True, settings=settings)
    except InvalidFile as exc:
        storage.discard(staged)
        raise InvalidFile(exc.reason, line=exc.line, field=exc.field, filename=filename) from exc
    except BaseException:
        storage.discard(staged)
        raise


def known_failure(n_examples: int | None, settings: Settings) -> str | None:
    """What the upload already knows will fail processing (which then replaces this with its full report)."""
    if n_examples is None or n_examples >= settings.min_examples:
        return None
    noun = "example" if n_examples == 1 else "examples"
    return (
        f"processing will fail: the file has {n_examples} {noun}; at least {settings.min_examples} are "
        "required"
    )


def new_file_row(
    *,
    org_id: str,
    filename: str,
    purpose: str,
    staged: Staged,
    n_lines: int | None,
    created_at: datetime,
    expires_after_s: int | None,
    settings: Settings,
) -> File:
    return File(
        org_id=org_id,
        filename=filename,
        purpose=purpose,
        bytes=staged.size,
        sha256=staged.sha256,
        storage_key="",
        status="uploaded" if purpose == "fine-tune" else "processed",
        n_examples=n_lines,
        status_details=known_failure(n_lines, settings),
        created_at=created_at,
        expires_at=expiry(created_at, expires_after_s),
    )


def save_file(
    session: Session,
    row: File,
    storage: Storage,
    staged: Staged,
    settings: Settings,
    *,
    also: Callable[[Session], None] | None = None,
) -> None:
    """Check the quota, store the object under a key of its own and commit the row, in one transaction
    that holds the organization's row (concurrent uploads of one org are checked one after the other).
    ``also`` makes the caller's own changes in that transaction, before the quota is counted (an upload
    drops its parts, whose bytes the quota counted until now). On any failure nothing stays behind: the
    staged file or the new object is removed, and the caller's changes are rolled back."""
    key: str | None = None
    try:
        org = crud.lock_org(session, org_id=row.org_id)
        if also is not None:
            also(session)
            session.flush()
        quota = storage_quota(settings, org.policy)
        used = crud.stored_bytes(session, org_id=row.org_id)
        if used + row.bytes > quota:
            raise QuotaExceeded(
                f"storing this file ({row.bytes} bytes) would take the organization's files to "
                f"{used + row.bytes} bytes, over its storage quota of {quota} bytes; delete files to free "
                "space",
                param="file",
            )
        key = storage.commit(staged)
        row.storage_key = key
        session.add(row)
        session.commit()
    except BaseException:
        session.rollback()
        if key is None:
            storage.discard(staged)
        else:
            storage.delete(key)  # the key is this row's own: no other row can point at it
        raise
