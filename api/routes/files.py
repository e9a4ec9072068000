"""/v1/files: upload (checked while streaming to storage), list, retrieve, delete, content."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import quote

from fastapi import APIRouter, BackgroundTasks, Form, Query, Request, UploadFile
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from api import crud
from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.processing import check_upload, process_file
from api.schemas import UPLOAD_PURPOSES, FileDeletedOut, FileOut, ListOut
from api.views import file_out
from models.base import utcnow
from models.tables import File
from tunegate.errors import InvalidFile, InvalidRequest, NotFound
from tunegate.settings import Settings
from tunegate.storage import Staged, Storage, get_storage

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/files", tags=["files"])
MAX_FILENAME = 512


@router.post("", response_model=FileOut)
def create_file(
    file: UploadFile, purpose: Annotated[str, Form()], org: CurrentOrg, session: SessionDep,
    settings: SettingsDep, background: BackgroundTasks,
) -> FileOut:
    """Stream to a staged temp file, check it (400 naming the line), then store blob and row."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequest(f"purpose {purpose!r} is not supported; use one of {', '.join(UPLOAD_PURPOSES)}",
                             param="purpose", code="invalid_purpose")
    filename = _clean_filename(file.filename)
    storage = get_storage(settings)
    staged = storage.stage(file.file, max_bytes=settings.max_upload_bytes)
    n_lines = _checked(storage, staged, filename, purpose, settings)
    key = storage.commit(staged)
    row = File(
        org_id=org.id, filename=filename, purpose=purpose, bytes=staged.size, sha256=staged.sha256,
        storage_key=key, status="uploaded" if purpose == "fine-tune" else "processed", n_examples=n_lines,
        status_details=_known_failure(n_lines, settings),
    )
    _save(session, row, storage)
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
    return (f"processing will fail: the file has {n_examples} {noun}; at least {settings.min_examples} are "
            "required")


def _save(session: Session, row: File, storage: Storage) -> None:
    """Commit the row; if that fails, remove the blob unless another file shares it (nothing half-written)."""
    session.add(row)
    try:
        session.commit()
    except BaseException:
        session.rollback()
        if not crud.blob_referenced(session, storage_key=row.storage_key):
            storage.delete(row.storage_key)
        raise


def _clean_filename(name: str | None) -> str:
    cleaned = "".join(ch for ch in (name or "") if ch.isprintable()).strip()
    if len(cleaned) > MAX_FILENAME:
        raise InvalidRequest(f"filename is longer than {MAX_FILENAME} characters", param="file",
                             code="invalid_filename")
    return cleaned or "upload.jsonl"


@router.get("", response_model=ListOut[FileOut])
def list_files(
    org: CurrentOrg, session: SessionDep, after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc", purpose: str | None = None,
) -> ListOut[FileOut]:
    rows, more = crud.list_files(session, org=org, after=after, limit=limit, order=order, purpose=purpose)
    data = [file_out(r) for r in rows]
    return ListOut[FileOut].page(data, more)


@router.get("/{file_id}", response_model=FileOut)
def retrieve_file(file_id: str, org: CurrentOrg, session: SessionDep) -> FileOut:
    return file_out(crud.get_file(session, org=org, file_id=file_id))


@router.delete("/{file_id}", response_model=FileDeletedOut)
def delete_file(file_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> FileDeletedOut:
    row = crud.get_file(session, org=org, file_id=file_id)
    keep_blob = crud.file_in_use(session, file=row)
    row.deleted_at = utcnow()
    session.commit()
    if not keep_blob:
        get_storage(settings).delete(row.storage_key)
    return FileDeletedOut(id=row.id, deleted=True)


@router.get("/{file_id}/content", response_class=StreamingResponse,
            responses={200: {"content": {"application/octet-stream": {}}}})
def file_content(
    file_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep, request: Request
) -> StreamingResponse:
    row = crud.get_file(session, org=org, file_id=file_id)
    try:
        fh = get_storage(settings).open(row.storage_key)
    except NotFound as exc:
        rid = getattr(request.state, "request_id", "-")
        log.warning("%s: content of %s (storage key %s) is missing", rid, file_id, row.storage_key)
        raise NotFound(f"The content of file {file_id} is not available.", param="file_id",
                       code="file_content_missing") from exc

    def chunks() -> Iterator[bytes]:
        with fh:
            while chunk := fh.read(1 << 16):
                yield chunk

    return StreamingResponse(
        chunks(), media_type="application/octet-stream",
        headers={"content-disposition": f"attachment; filename*=UTF-8''{quote(row.filename, safe='')}"},
    )
