"""/v1/uploads: a file larger than one request, sent in parts (OpenAI's Uploads API, which the SDK's
``client.uploads.upload_file_chunked`` drives).

``create`` declares the file's size, name and purpose; each ``parts.create`` streams one part (at most
``max_upload_part_bytes``) to storage, where it counts against the organization's storage quota; ``complete``
assembles the parts in the order given into one staged file, streaming (constant memory), checks the md5 if
one is given, runs the checks of ``POST /v1/files`` on it and creates the File (charged to the quota in the
same transaction that drops the parts); ``cancel`` drops the parts. An upload expires ``upload_expiry_s``
after its creation; the worker's reaper removes what an expired upload left. Another organization's upload id
answers 404 like a missing one.

While an upload is assembled it is ``completing`` (shown as ``pending``); no session is held meanwhile, and a
failed completion (wrong order, md5, a bad line) puts it back to ``pending`` so the client can retry.
"""

from __future__ import annotations

import hashlib
from contextlib import closing
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Header, Request
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.core.multipart import receive_upload, run_check
from api.deps import CurrentOrg, SessionDep, SettingsDep, current_org_blocking
from api.schemas import UploadCompleteIn, UploadCreateIn, UploadOut, UploadPartOut
from api.services import crud
from api.services.file_store import (
    checked_lines,
    checked_purpose,
    clean_filename,
    expires_after_seconds,
    new_file_row,
    save_file,
)
from api.services.processing import process_file
from api.services.views import file_out, upload_out
from models.base import new_id, unix, utcnow
from models.db import new_session, session_scope
from models.files import drop_parts
from models.policy import storage_quota
from models.tables import Organization, Upload, UploadPart
from tunegate.errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from tunegate.settings import Settings
from tunegate.storage import CHUNK, ObjectMissing, Staged, Storage, get_storage

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

PART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {"data": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


def _get(session: Session, *, org_id: str, upload_id: str, for_update: bool = False) -> Upload:
    stmt = select(Upload).where(Upload.id == upload_id, Upload.org_id == org_id)
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalar(stmt.execution_options(populate_existing=True))
    if row is None:
        raise NotFound(f"No such upload: {upload_id}", param="upload_id", code="upload_not_found")
    return row


def _check_open(row: Upload) -> None:
    """Raise unless parts may still be added to the upload, or it completed."""
    if row.status == "pending" and row.expires_at <= utcnow():
        raise Conflict(
            f"upload {row.id} expired at {unix(row.expires_at)}; create a new upload",
            param="upload_id",
            code="upload_expired",
        )
    if row.status == "completing":
        raise Conflict(f"upload {row.id} is being completed", param="upload_id", code="upload_completing")
    if row.status != "pending":
        raise Conflict(
            f"upload {row.id} is already {row.status}", param="upload_id", code="upload_not_pending"
        )


def _received(session: Session, upload_id: str) -> int:
    n = session.scalar(
        select(func.coalesce(func.sum(UploadPart.bytes), 0)).where(UploadPart.upload_id == upload_id)
    )
    return int(n or 0)


@router.post("", response_model=UploadOut)
def create_upload(
    body: UploadCreateIn, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> UploadOut:
    purpose = checked_purpose(body.purpose)
    if body.bytes > settings.max_upload_bytes:
        raise InvalidRequest(
            f"bytes: {body.bytes} is over the largest file accepted, {settings.max_upload_bytes} bytes",
            param="bytes",
            code="file_too_large",
        )
    ea = body.expires_after
    seconds = None if ea is None else expires_after_seconds(ea.get("anchor"), ea.get("seconds"))
    quota = storage_quota(settings, org.policy)
    used = crud.stored_bytes(session, org_id=org.id)
    if used + body.bytes > quota:
        raise QuotaExceeded(
            f"a file of {body.bytes} bytes would take the organization's files over its storage quota of "
            f"{quota} bytes ({used} bytes used); delete files to free space",
            param="bytes",
        )
    now = utcnow()
    row = Upload(
        org_id=org.id,
        filename=clean_filename(body.filename),
        purpose=purpose,
        mime_type=body.mime_type,
        bytes=body.bytes,
        status="pending",
        file_expires_after_s=seconds,
        created_at=now,
        expires_at=now + timedelta(seconds=settings.upload_expiry_s),
    )
    session.add(row)
    session.commit()
    return upload_out(row)


# --- parts -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Room:
    org: Organization
    declared: int  # bytes the upload may still take (its declared size less the parts so far)
    quota: int  # bytes the organization's quota has left


def _room(authorization: str | None, settings: Settings, upload_id: str) -> _Room:
    """Authenticate and measure the room for one more part, in a session closed at once (no session is
    held while the part streams in)."""
    with closing(new_session(readonly=True)) as session:
        org = current_org_blocking(authorization, settings)
        row = _get(session, org_id=org.id, upload_id=upload_id)
        _check_open(row)
        declared = row.bytes - _received(session, upload_id)
        quota = storage_quota(settings, org.policy) - crud.stored_bytes(session, org_id=org.id)
        return _Room(org, declared=max(0, declared), quota=max(0, quota))


def _too_many_bytes(upload_id: str, declared: int) -> InvalidRequest:
    return InvalidRequest(
        f"this part would take upload {upload_id} past the {declared} bytes it was created for",
        param="data",
        code="upload_size_exceeded",
    )


@router.post("/{upload_id}/parts", response_model=UploadPartOut, openapi_extra=PART_BODY)
async def add_part(
    upload_id: str,
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> UploadPartOut:
    """Stream one part (multipart field ``data``) to storage; stopped at the part limit, at the upload's
    declared size, or at the organization's quota, whichever comes first."""
    room = await run_in_threadpool(_room, authorization, settings, upload_id)
    limit = min(settings.max_upload_part_bytes, room.declared, room.quota)
    storage = get_storage(settings)
    try:
        got = await receive_upload(request, storage, max_bytes=limit, file_field="data")
    except PayloadTooLarge as exc:
        if limit == settings.max_upload_part_bytes:
            raise PayloadTooLarge(
                f"a part may hold at most {limit} bytes", param="data", code="part_too_large"
            ) from exc
        if limit == room.declared:
            raise _too_many_bytes(upload_id, room.declared) from exc
        raise QuotaExceeded(
            "this part would take the organization's files over its storage quota; delete files to free "
            "space",
            param="data",
        ) from exc
    assert got.staged is not None
    try:
        return await run_in_threadpool(_save_part, room.org, upload_id, got.staged, storage, settings)
    finally:
        storage.discard(got.staged)  # a no-op once committed


def _save_part(
    org: Organization, upload_id: str, staged: Staged, storage: Storage, settings: Settings
) -> UploadPartOut:
    """Record the part, checking again (parts of one organization are recorded one after the other) that
    the upload is open and that its declared size and the quota still hold it."""
    key: str | None = None
    with closing(new_session()) as session:
        try:
            locked = crud.lock_org(session, org_id=org.id)
            row = _get(session, org_id=org.id, upload_id=upload_id, for_update=True)
            _check_open(row)
            if _received(session, upload_id) + staged.size > row.bytes:
                raise _too_many_bytes(upload_id, row.bytes)
            quota = storage_quota(settings, locked.policy)
            if crud.stored_bytes(session, org_id=org.id) + staged.size > quota:
                raise QuotaExceeded(
                    f"this part would take the organization's files over its storage quota of {quota} "
                    "bytes; delete files to free space",
                    param="data",
                )
            key = storage.commit(staged)
            part = UploadPart(upload_id=upload_id, bytes=staged.size, storage_key=key, created_at=utcnow())
            session.add(part)
            session.commit()
        except BaseException:
            session.rollback()
            if key is not None:
                storage.delete(key)
            raise
    return UploadPartOut(id=part.id, created_at=unix(part.created_at) or 0, upload_id=upload_id)


# --- complete and cancel ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    upload: Upload
    keys: list[str]  # the parts' objects, in file order


def _begin_completing(org_id: str, upload_id: str, part_ids: list[str]) -> _Plan:
    """Check the parts' list against the upload and mark it ``completing`` (one short transaction)."""
    with session_scope() as session:
        row = _get(session, org_id=org_id, upload_id=upload_id, for_update=True)
        _check_open(row)
        parts = {
            p.id: p for p in session.scalars(select(UploadPart).where(UploadPart.upload_id == upload_id))
        }
        seen: set[str] = set()
        for pid in part_ids:
            if pid not in parts:
                raise InvalidRequest(
                    f"part_ids: {pid!r} is not a part of upload {upload_id}",
                    param="part_ids",
                    code="unknown_part",
                )
            if pid in seen:
                raise InvalidRequest(
                    f"part_ids: {pid!r} is listed twice", param="part_ids", code="duplicate_part"
                )
            seen.add(pid)
        total = sum(parts[pid].bytes for pid in part_ids)
        if total != row.bytes:
            raise InvalidRequest(
                f"part_ids: the parts listed hold {total} bytes, but upload {upload_id} was created for "
                f"{row.bytes} bytes",
                param="part_ids",
                code="upload_size_mismatch",
            )
        row.status = "completing"
        return _Plan(upload=row, keys=[parts[pid].storage_key for pid in part_ids])


def _reopen(upload_id: str) -> None:
    """A failed completion leaves the upload ``pending`` with its parts (the client may retry)."""
    with session_scope() as session:
        session.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.status == "completing")
            .values(status="pending")
            .execution_options(synchronize_session=False)
        )


def assemble(storage: Storage, keys: list[str], *, size: int, md5: str | None) -> Staged:
    """Concatenate the parts' objects into one staged file, in constant memory; ``md5`` (hex), when given,
    must match the result (400 otherwise, and nothing stays staged)."""
    writer = storage.begin(max_bytes=size)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        for key in keys:
            try:
                fh = storage.open(key)
            except ObjectMissing as exc:
                raise NotFound(
                    "a part of this upload is missing from storage; create a new upload",
                    param="part_ids",
                    code="upload_part_missing",
                ) from exc
            with fh:
                while chunk := fh.read(CHUNK):
                    digest.update(chunk)
                    writer.write(chunk)
        staged = writer.finish()
    except BaseException:
        writer.abort()
        raise
    if md5 is not None and md5.strip().lower() != digest.hexdigest():
        storage.discard(staged)
        raise InvalidRequest(
            f"md5: the assembled file's md5 is {digest.hexdigest()}, not {md5!r}",
            param="md5",
            code="md5_mismatch",
        )
    return staged


def _mark_completed(session: Session, *, org_id: str, upload_id: str, file_id: str) -> list[str]:
    """In the File's transaction: the upload completed, its part rows dropped (their keys returned; the
    objects go once this commits)."""
    row = _get(session, org_id=org_id, upload_id=upload_id, for_update=True)
    if row.status != "completing":  # the reaper expired it meanwhile (a very slow completion)
        raise Conflict(f"upload {upload_id} is {row.status}", param="upload_id", code="upload_not_pending")
    row.status, row.file_id = "completed", file_id
    return drop_parts(session, upload_id=upload_id)


@router.post("/{upload_id}/complete", response_model=UploadOut)
async def complete_upload(
    upload_id: str,
    body: UploadCompleteIn,
    settings: SettingsDep,
    background: BackgroundTasks,
    authorization: Annotated[str | None, Header()] = None,
) -> UploadOut:
    """Assemble, check and store in a worker thread, a few at once (``api.core.multipart.run_check``): the
    check reads every byte of the file."""
    return await run_check(_complete, upload_id, body, settings, background, authorization)


def _complete(
    upload_id: str,
    body: UploadCompleteIn,
    settings: Settings,
    background: BackgroundTasks,
    authorization: str | None,
) -> UploadOut:
    org = current_org_blocking(authorization, settings)
    plan = _begin_completing(org.id, upload_id, body.part_ids)
    up, storage = plan.upload, get_storage(settings)
    dropped: list[str] = []
    try:
        staged = assemble(storage, plan.keys, size=up.bytes, md5=body.md5)
        n_lines = checked_lines(storage, staged, up.filename, up.purpose, settings)
        row = new_file_row(
            org_id=org.id,
            filename=up.filename,
            purpose=up.purpose,
            staged=staged,
            n_lines=n_lines,
            created_at=utcnow(),
            expires_after_s=up.file_expires_after_s,
            settings=settings,
        )
        row.id = new_id("file-")
        with closing(new_session()) as session:
            save_file(
                session,
                row,
                storage,
                staged,
                settings,
                also=lambda s: dropped.extend(
                    _mark_completed(s, org_id=org.id, upload_id=upload_id, file_id=row.id)
                ),
            )
    except BaseException:
        _reopen(upload_id)
        raise
    for key in dropped:
        storage.delete(key)
    if row.purpose == "fine-tune":
        background.add_task(process_file, row.id)
    up.status = "completed"
    return upload_out(up, file_out(row))


@router.post("/{upload_id}/cancel", response_model=UploadOut)
def cancel_upload(upload_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> UploadOut:
    row = _get(session, org_id=org.id, upload_id=upload_id, for_update=True)
    if row.status == "cancelled":
        return upload_out(row)
    _check_open(row)
    keys = drop_parts(session, upload_id=upload_id)
    row.status = "cancelled"
    session.commit()
    storage = get_storage(settings)
    for key in keys:
        storage.delete(key)
    return upload_out(row)
