"""/v1/files: upload (checked while streaming to storage), list, retrieve, delete, content."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import closing
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from api.core.multipart import Upload, receive_upload, run_check
from api.deps import CurrentOrg, SessionDep, SettingsDep, current_org_blocking
from api.schemas import FileDeletedOut, FileOut, ListOut
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
from api.services.views import file_out
from models.base import utcnow
from models.db import new_session
from models.files import file_in_use
from models.policy import storage_quota
from models.tables import Organization
from tunegate.errors import NotFound, PayloadTooLarge, QuotaExceeded
from tunegate.settings import Settings
from tunegate.storage import ObjectMissing, Staged, Storage, get_storage

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/files", tags=["files"])


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
                        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
                        "expires_after[seconds]": {"type": "integer"},
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
    """Authenticate, stream the file part straight into a staged temp file (``api/core/multipart.py``), check
    it (400 naming the line) and the org's quota, then store it. No database session is held while the body
    streams (a slow client must not hold one of the API's few sessions); the check reads the file in a worker
    thread, a few at once (``api.core.multipart.run_check``)."""
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
        return await run_check(_store, upload, upload.staged, org, settings, background, storage)
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
    purpose = checked_purpose(upload.purpose)
    expires_after_s = expires_after_seconds(
        upload.fields.get("expires_after[anchor]"), upload.fields.get("expires_after[seconds]")
    )
    filename = clean_filename(upload.filename)
    n_lines = checked_lines(storage, staged, filename, purpose, settings)
    row = new_file_row(
        org_id=org.id,
        filename=filename,
        purpose=purpose,
        staged=staged,
        n_lines=n_lines,
        created_at=utcnow(),
        expires_after_s=expires_after_s,
        settings=settings,
    )
    with closing(new_session()) as session:
        save_file(session, row, storage, staged, settings)
    if purpose == "fine-tune":
        background.add_task(process_file, row.id)
    return file_out(row)


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
    keep_blob = file_in_use(session, file=row)
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
