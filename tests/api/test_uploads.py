"""The Uploads API through the SDK: a file larger than one request sent in parts, assembled in the order
given, checked like an upload to /v1/files; md5, cancel, expiry, limits and tenancy."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import openai
import pytest
from sqlalchemy import func, select, update

from models.base import utcnow
from models.db import session_scope
from models.files import expire_uploads
from models.tables import Upload, UploadPart
from tests.api.conftest import chat, good_file, jsonl, new_key, sdk
from tests.api.server import Server
from tunegate.settings import get_settings
from tunegate.storage import get_storage

PART_LIMIT = 64 * 1024  # TUNEGATE_MAX_UPLOAD_PART_BYTES of the test server (tests/api/conftest.py)
FILE_LIMIT = 200_000  # TUNEGATE_MAX_UPLOAD_BYTES


def _big_file() -> bytes:
    """A valid training file larger than one part (and than any part request may be)."""
    content = good_file(1000)
    assert PART_LIMIT < len(content) < FILE_LIMIT
    return content


def _parts_left(upload_id: str) -> int:
    with session_scope() as s:
        return int(s.scalar(select(func.count()).where(UploadPart.upload_id == upload_id)) or 0)


def _stored_objects(server: Server) -> set[Path]:
    root = server.home / "files"
    return {p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"}


def test_upload_file_chunked_assembles_a_file_larger_than_a_part(
    client: openai.OpenAI, server: Server
) -> None:
    content = _big_file()
    upload = client.uploads.upload_file_chunked(
        file=content,
        filename="big.jsonl",
        bytes=len(content),
        mime_type="text/jsonl",
        purpose="fine-tune",
        part_size=40_000,
        md5=hashlib.md5(content).hexdigest(),
    )
    assert upload.status == "completed" and upload.object == "upload" and upload.bytes == len(content)
    assert (
        upload.file is not None and upload.file.bytes == len(content) and upload.file.filename == "big.jsonl"
    )
    done = client.files.wait_for_processing(upload.file.id, poll_interval=0.05, max_wait_seconds=30)
    assert done.status == "processed", done.status_details
    assert client.files.content(done.id).read() == content
    assert _parts_left(upload.id) == 0
    job = client.fine_tuning.jobs.create(model="smollm2-135m", training_file=done.id)
    assert job.training_file == done.id


def test_upload_file_chunked_from_a_path(client: openai.OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"0123456789" * 10_000)
    upload = client.uploads.upload_file_chunked(
        file=path, mime_type="text/plain", purpose="user_data", part_size=30_000
    )
    assert upload.file is not None and upload.file.filename == "notes.txt"
    assert client.files.content(upload.file.id).read() == path.read_bytes()


def test_parts_are_assembled_in_the_order_given(client: openai.OpenAI) -> None:
    a, b, c = good_file(3), jsonl([chat(100)]), good_file(8)
    up = client.uploads.create(
        bytes=len(a + b + c), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    assert up.status == "pending" and up.expires_at - up.created_at == get_settings().upload_expiry_s
    pc = client.uploads.parts.create(upload_id=up.id, data=c)
    pa = client.uploads.parts.create(upload_id=up.id, data=a)
    pb = client.uploads.parts.create(upload_id=up.id, data=b)
    assert pa.object == "upload.part" and pa.upload_id == up.id
    done = client.uploads.complete(up.id, part_ids=[pa.id, pb.id, pc.id])
    assert done.file is not None
    assert client.files.content(done.file.id).read() == a + b + c


def test_wrong_md5_is_400_and_the_upload_can_be_completed_again(client: openai.OpenAI) -> None:
    content = good_file(12)
    up = client.uploads.create(
        bytes=len(content), filename="t.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    part = client.uploads.parts.create(upload_id=up.id, data=content)
    with pytest.raises(openai.BadRequestError) as info:
        client.uploads.complete(up.id, part_ids=[part.id], md5="0" * 32)
    assert info.value.param == "md5" and info.value.code == "md5_mismatch"
    done = client.uploads.complete(up.id, part_ids=[part.id], md5=hashlib.md5(content).hexdigest().upper())
    assert done.status == "completed" and done.file is not None


def test_a_bad_line_is_named_and_nothing_is_stored(client: openai.OpenAI, server: Server) -> None:
    head, bad = good_file(5), b'{"messages": [}\n'
    up = client.uploads.create(
        bytes=len(head + bad), filename="bad.jsonl", mime_type="text/jsonl", purpose="fine-tune"
    )
    p1 = client.uploads.parts.create(upload_id=up.id, data=head)
    p2 = client.uploads.parts.create(upload_id=up.id, data=bad)
    before = _stored_objects(server)
    with pytest.raises(openai.BadRequestError) as info:
        client.uploads.complete(up.id, part_ids=[p1.id, p2.id])
    assert info.value.param == "file" and "bad.jsonl, line 6" in info.value.message
    assert _stored_objects(server) == before and list(client.files.list()) == []
    cancelled = client.uploads.cancel(up.id)  # the failed completion left it pending, with its parts
    assert cancelled.status == "cancelled" and _parts_left(up.id) == 0
    assert _stored_objects(server) < before  # the parts' objects are gone


@pytest.mark.parametrize("case", ["unknown", "duplicate", "short"])
def test_a_wrong_part_list_is_400_naming_part_ids(case: str, client: openai.OpenAI) -> None:
    up = client.uploads.create(bytes=20, filename="n.txt", mime_type="text/plain", purpose="user_data")
    p1 = client.uploads.parts.create(upload_id=up.id, data=b"a" * 10)
    p2 = client.uploads.parts.create(upload_id=up.id, data=b"b" * 10)
    ids = {"unknown": [p1.id, "part_nope"], "duplicate": [p1.id, p1.id], "short": [p2.id]}[case]
    with pytest.raises(openai.BadRequestError) as info:
        client.uploads.complete(up.id, part_ids=ids)
    assert info.value.param == "part_ids"
    assert (
        info.value.code
        == {"unknown": "unknown_part", "duplicate": "duplicate_part", "short": "upload_size_mismatch"}[case]
    )
    assert client.uploads.complete(up.id, part_ids=[p2.id, p1.id]).status == "completed"


def test_limits_on_parts_and_on_the_whole_file(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as too_big:
        client.uploads.create(bytes=FILE_LIMIT + 1, filename="x", mime_type="text/plain", purpose="user_data")
    assert too_big.value.param == "bytes" and str(FILE_LIMIT) in too_big.value.message
    with pytest.raises(openai.BadRequestError) as purpose:
        client.uploads.create(bytes=10, filename="x", mime_type="text/plain", purpose="nonsense")  # type: ignore[arg-type]
    assert purpose.value.param == "purpose"
    up = client.uploads.create(bytes=150_000, filename="x", mime_type="text/plain", purpose="user_data")
    with pytest.raises(openai.APIStatusError) as part:
        client.uploads.parts.create(upload_id=up.id, data=b"x" * (PART_LIMIT + 1))
    assert part.value.status_code == 413 and part.value.code == "part_too_large"
    client.uploads.parts.create(upload_id=up.id, data=b"x" * PART_LIMIT)
    client.uploads.parts.create(upload_id=up.id, data=b"x" * PART_LIMIT)
    with pytest.raises(openai.BadRequestError) as over:  # 150000 declared, 131072 sent, 30000 more
        client.uploads.parts.create(upload_id=up.id, data=b"x" * 30_000)
    assert over.value.code == "upload_size_exceeded" and over.value.param == "data"


def test_parts_count_against_the_storage_quota(server: Server) -> None:
    client = sdk(server, new_key(policy={"storage_quota_bytes": 100_000}))
    with pytest.raises(openai.PermissionDeniedError) as early:
        client.uploads.create(bytes=100_001, filename="x", mime_type="text/plain", purpose="user_data")
    assert early.value.code == "storage_quota_exceeded"
    first = client.uploads.create(bytes=60_000, filename="x", mime_type="text/plain", purpose="user_data")
    second = client.uploads.create(bytes=50_000, filename="y", mime_type="text/plain", purpose="user_data")
    client.uploads.parts.create(upload_id=first.id, data=b"x" * 60_000)
    with pytest.raises(openai.PermissionDeniedError):  # a new upload sees the parts' bytes too
        client.uploads.create(bytes=50_000, filename="z", mime_type="text/plain", purpose="user_data")
    with pytest.raises(openai.PermissionDeniedError) as late:  # 60000 in parts + 45000 > 100000
        client.uploads.parts.create(upload_id=second.id, data=b"y" * 45_000)
    assert late.value.code == "storage_quota_exceeded"
    client.uploads.cancel(first.id)  # its parts no longer count
    client.uploads.parts.create(upload_id=second.id, data=b"y" * 45_000)


def test_cancelled_and_completed_uploads_take_no_more_parts(client: openai.OpenAI) -> None:
    up = client.uploads.create(bytes=3, filename="c.txt", mime_type="text/plain", purpose="user_data")
    part = client.uploads.parts.create(upload_id=up.id, data=b"abc")
    assert client.uploads.complete(up.id, part_ids=[part.id]).status == "completed"
    for call in (
        lambda: client.uploads.parts.create(upload_id=up.id, data=b"d"),
        lambda: client.uploads.complete(up.id, part_ids=[part.id]),
        lambda: client.uploads.cancel(up.id),
    ):
        with pytest.raises(openai.ConflictError) as info:
            call()
        assert info.value.code == "upload_not_pending"
    other = client.uploads.create(bytes=3, filename="c.txt", mime_type="text/plain", purpose="user_data")
    assert client.uploads.cancel(other.id).status == "cancelled"
    assert client.uploads.cancel(other.id).status == "cancelled"  # idempotent
    with pytest.raises(openai.ConflictError):
        client.uploads.parts.create(upload_id=other.id, data=b"abc")


def test_another_organizations_upload_is_404(client: openai.OpenAI, server: Server) -> None:
    up = client.uploads.create(bytes=3, filename="t.txt", mime_type="text/plain", purpose="user_data")
    part = client.uploads.parts.create(upload_id=up.id, data=b"abc")
    other = sdk(server, new_key())
    for call in (
        lambda: other.uploads.parts.create(upload_id=up.id, data=b"abc"),
        lambda: other.uploads.complete(up.id, part_ids=[part.id]),
        lambda: other.uploads.cancel(up.id),
    ):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.code == "upload_not_found"
    assert client.uploads.complete(up.id, part_ids=[part.id]).status == "completed"


def test_an_expired_upload_is_refused_and_reaped(client: openai.OpenAI, server: Server) -> None:
    up = client.uploads.create(bytes=6, filename="e.txt", mime_type="text/plain", purpose="user_data")
    part = client.uploads.parts.create(upload_id=up.id, data=b"abc")
    with session_scope() as s:
        s.execute(update(Upload).where(Upload.id == up.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(openai.ConflictError) as info:
        client.uploads.parts.create(upload_id=up.id, data=b"def")
    assert info.value.code == "upload_expired"
    with pytest.raises(openai.ConflictError):
        client.uploads.complete(up.id, part_ids=[part.id])
    before = _stored_objects(server)
    assert up.id in expire_uploads(get_storage(), get_settings())
    assert expire_uploads(get_storage(), get_settings()) == []  # once
    assert _parts_left(up.id) == 0 and len(_stored_objects(server)) == len(before) - 1
    with session_scope() as s:
        row = s.get(Upload, up.id)
        assert row is not None and row.status == "expired"


def test_the_completed_file_honours_expires_after(client: openai.OpenAI) -> None:
    up = client.uploads.create(
        bytes=3,
        filename="t.txt",
        mime_type="text/plain",
        purpose="user_data",
        expires_after={"anchor": "created_at", "seconds": 7200},
    )
    part = client.uploads.parts.create(upload_id=up.id, data=b"abc")
    done = client.uploads.complete(up.id, part_ids=[part.id])
    assert done.file is not None and done.file.expires_at is not None
    assert done.file.expires_at - done.file.created_at == 7200


def test_the_startup_sweep_keeps_the_parts_of_open_uploads(client: openai.OpenAI) -> None:
    from api.services.recovery import sweep_storage

    up = client.uploads.create(bytes=6, filename="s.txt", mime_type="text/plain", purpose="user_data")
    p1 = client.uploads.parts.create(upload_id=up.id, data=b"abc")
    p2 = client.uploads.parts.create(upload_id=up.id, data=b"def")
    sweep_storage(get_settings().model_copy(update={"storage_sweep_grace_s": 0.0}))
    done = client.uploads.complete(up.id, part_ids=[p1.id, p2.id])
    assert done.file is not None and client.files.content(done.file.id).read() == b"abcdef"
