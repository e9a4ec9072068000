"""Lifetimes of stored files and uploads: when a stored object is still needed, and the removal of what
expired (``files.create(expires_after=...)``, uploads never completed). The worker's reaper runs
``expire_files`` and ``expire_uploads`` periodically; each is safe to run from many workers at once (one
compare-and-set ``UPDATE`` per row decides who removes it)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.tables import File, Job, Upload, UploadPart
from tunegate.settings import Settings
from tunegate.storage import Storage

log = logging.getLogger(__name__)

UNFINISHED = ("validating_files", "queued", "running")
# An upload whose parts still count (storage quota) and may still be completed.
OPEN_UPLOAD = ("pending", "completing")


def file_in_use(session: Session, *, file: File) -> bool:
    """True when another live row shares the stored object or an unfinished job trains on this file."""
    shared = session.scalar(
        select(func.count())
        .select_from(File)
        .where(File.storage_key == file.storage_key, File.id != file.id, File.deleted_at.is_(None))
    )
    active = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(
            (Job.training_file == file.id) | (Job.validation_file == file.id),
            Job.status.in_(UNFINISHED),
        )
    )
    return bool(shared) or bool(active)


def drop_parts(session: Session, *, upload_id: str) -> list[str]:
    """Delete an upload's part rows; returns their storage keys, which the caller removes once committed."""
    keys = list(session.scalars(select(UploadPart.storage_key).where(UploadPart.upload_id == upload_id)))
    session.execute(delete(UploadPart).where(UploadPart.upload_id == upload_id))
    return keys


def expire_files(storage: Storage, now: datetime | None = None) -> list[str]:
    """Delete every live file whose ``expires_at`` has passed (row hidden, object removed unless another
    row or an unfinished job still needs it); returns their ids."""
    now = now or utcnow()
    with session_scope() as s:
        ids = list(
            s.scalars(
                select(File.id)
                .where(File.deleted_at.is_(None), File.expires_at.is_not(None), File.expires_at <= now)
                .order_by(File.id)
            )
        )
    done = []
    for file_id in ids:
        with session_scope() as s:
            res = s.execute(
                update(File)
                .where(File.id == file_id, File.deleted_at.is_(None))
                .values(deleted_at=now)
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue  # deleted by its owner or another reaper in the meantime
            row = s.get(File, file_id)
            assert row is not None
            key, keep = row.storage_key, file_in_use(s, file=row)
        if not keep:
            storage.delete(key)
        log.info("file %s expired and was deleted", file_id)
        done.append(file_id)
    return done


def expire_uploads(storage: Storage, settings: Settings, now: datetime | None = None) -> list[str]:
    """Mark uploads past their ``expires_at`` ``expired`` and remove their parts; returns their ids.

    An upload being completed is left alone for another ``upload_expiry_s`` (its parts are being read);
    one still ``completing`` after that was abandoned by a stopped API process.
    """
    now = now or utcnow()
    stuck = now - timedelta(seconds=settings.upload_expiry_s)
    due = ((Upload.status == "pending") & (Upload.expires_at <= now)) | (
        (Upload.status == "completing") & (Upload.expires_at <= stuck)
    )
    with session_scope() as s:
        ids = list(s.scalars(select(Upload.id).where(due).order_by(Upload.id)))
    done = []
    for upload_id in ids:
        with session_scope() as s:
            res = s.execute(
                update(Upload)
                .where(Upload.id == upload_id, due)
                .values(status="expired")
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                continue
            keys = drop_parts(s, upload_id=upload_id)
        for key in keys:
            storage.delete(key)
        log.info("upload %s expired; removed its %d parts", upload_id, len(keys))
        done.append(upload_id)
    return done
