"""/v1/files: upload (checked while streaming to storage), list, retrieve, delete, content."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api import crud
from api.deps import CurrentOrg, SessionDep, SettingsDep, current_org_blocking
from api.processing import check_upload, process_file
from api.schemas import UPLOAD_PURPOSES, FileDeletedOut, FileOut, ListOut
from api.upload import Upload, receive_upload
from api.views import file_out
from models.base import utcnow
from models.db import new_session
from models.policy import storage_quota
from models.tables import File, Organization
from tunegate.errors import InvalidFile, InvalidRequest, NotFound, PayloadTooLarge, QuotaExceeded
from tunegate.settings import Settings
from tunegate.storage import ObjectMissing, Staged, Storage, get_storage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/files", tags=["files"])
MAX_FILENAME = 512


UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file", "purpose"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "purpose": {"type": "string"},
                    },
                }
            }
        },
    }
}


@router.post("", response_model=FileOut, openapi_extra=UPLOAD_BODY)
async def create_file(
    request: Request,
    settings: SettingsDep,
    background: BackgroundTasks,
    authorization: Annotated[str | None, Header()] = None,
) -> FileOut:
    """Authenticate, stream the file part straight into a staged temp file (``api/upload.py``), check it
    (400 naming the line) and the org's quota, then store it. No database session is held while the body
    streams (a slow client must not hold one of the API's few sessions)."""
    org, used = await run_in_threadpool(_authenticate, authorization, settings)
    quota = storage_quota(settings, org.policy)
    if used >= quota:
        raise QuotaExceeded(
            f"the organization's files already take {used} bytes of its storage quota of {quota} bytes; "
            "delete files to free space",
            param="file",
        )
    # Stop reading at the quota too (the row's transaction checks it again, against concurrent uploads).
    limit = min(settings.max_upload_bytes, quota - used)
    storage = get_storage(settings)
    try:
        upload = await receive_upload(request, storage, max_bytes=limit)
    except PayloadTooLarge as exc:
        if limit == settings.max_upload_bytes:
            raise
        raise QuotaExceeded(
            f"storing this file would take the organization's files over its storage quota of {quota} bytes "
            f"({used} bytes used); delete files to free space",
            param="file",
        ) from exc
    assert upload.staged is not None
    try:
        return await run_in_threadpool(_store, upload, upload.staged, org, settings, background, storage)
    finally:
        storage.discard(upload.staged)  # a no-op once committed (the temp file was renamed)


def _authenticate(authorization: str | None, settings: Settings) -> tuple[Organization, int]:
    """The caller's organization and the bytes its live files take, in a session closed at once."""
    org = current_org_blocking(authorization, settings)
    with closing(new_session(readonly=True)) as session:
        return org, crud.stored_bytes(session, org_id=org.id)


def _store(
    upload: Upload,
    staged: Staged,
    org: Organization,
    settings: Settings,
    background: BackgroundTasks,
    storage: Storage,
) -> FileOut:
    purpose = upload.purpose
    if purpose is None:
        raise InvalidRequest("the field 'purpose' is required", param="purpose", code="missing_purpose")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(
            f"purpose {purpose!r} is not supported; use one of {', '.join(UPLOAD_PURPOSES)}",
            param="purpose",
            code="invalid_purpose",
        )
    filename = _clean_filename(upload.filename)
    n_lines = _checked(storage, staged, filename, purpose, settings)
    row = File(
        org_id=org.id,
        filename=filename,
        purpose=purpose,
        bytes=staged.size,
        sha256=staged.sha256,
        storage_key="",
        status="uploaded" if purpose == "fine-tune" else "processed",
        n_examples=n_lines,
        status_details=_known_failure(n_lines, settings),
    )
    with closing(new_session()) as session:
        _save(session, row, storage, staged, settings)
    if purpose == "fine-tune":
        background.add_task(process_file, row.id)
    return file_out(row)


def _checked(storage: Storage, staged: Staged, filename: str, purpose: str, settings: Settings) -> int | None:
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


def _known_failure(n_examples: int | None, settings: Settings) -> str | None:
    """What the upload already knows will fail processing (which then replaces this with its full report)."""
    if n_examples is None or n_examples >= settings.min_examples:
        return None
    noun = "example" if n_examples == 1 else "examples"
    return (
        f"processing will fail: the file has {n_examples} {noun}; at least {settings.min_examples} are "
        "required"
    )


def _save(session: Session, row: File, storage: Storage, staged: Staged, settings: Settings) -> None:
    """Check the quota, store the object under a key of its own and commit the row, in one transaction
    that holds the organization's row (concurrent uploads of one org are checked one after the other).
    On any failure nothing stays behind: the staged file or the new object is removed."""
    key: str | None = None
    try:
        org = crud.lock_org(session, org_id=row.org_id)
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


def _clean_filename(name: str | None) -> str:
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    if len(cleaned) > MAX_FILENAME:
        raise InvalidRequest(
            f"filename is longer than {MAX_FILENAME} characters", param="file", code="invalid_filename"
        )
    return cleaned or "upload.jsonl"


@router.get("", response_model=ListOut[FileOut])
def list_files(
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
    purpose: str | None = None,
) -> ListOut[FileOut]:
    rows, more = crud.list_files(session, org=org, after=after, limit=limit, order=order, purpose=purpose)
    data = [file_out(r) for r in rows]
    return ListOut[FileOut].page(data, more)


@router.get("/{file_id}", response_model=FileOut)
def retrieve_file(file_id: str, org: CurrentOrg, session: SessionDep) -> FileOut:
    return file_out(crud.get_file(session, org=org, file_id=file_id))


@router.delete("/{file_id}", response_model=FileDeletedOut)
def delete_file(file_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> FileDeletedOut:
    """Hide the row, then remove its object unless a row still points at it or an unfinished job trains on
    it. New objects belong to one row only; a shared key is a legacy content-addressed one, which no new
    upload can take, so the check cannot race with an upload (a left-over object is swept at startup)."""
    row = crud.get_file(session, org=org, file_id=file_id)
    row.deleted_at = utcnow()
    session.flush()
    keep_blob = crud.file_in_use(session, file=row)
    session.commit()
    if not keep_blob:
        get_storage(settings).delete(row.storage_key)
    return FileDeletedOut(id=row.id, deleted=True)


@router.get(
    "/{file_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def file_content(
    file_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> StreamingResponse:
    row = crud.get_file(session, org=org, file_id=file_id)
    try:
        fh = get_storage(settings).open(row.storage_key)
    except ObjectMissing as exc:
        log.error("file %s: stored object %s is missing", row.id, exc.key)
        raise NotFound(
            f"the content of file {row.id} is missing; upload it again",
            param="file_id",
            code="file_content_missing",
        ) from exc

    def chunks() -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(1 << 16):
                yield chunk

    return StreamingResponse(
        chunks(),
        media_type="application/octet-stream",
        headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(row.filename, safe='')}"},
    )
