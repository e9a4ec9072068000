"""Expiry of files and uploads (what the worker's reaper runs): each row is removed once, and an object
another row or an unfinished job still needs stays."""

from __future__ import annotations

import io
from datetime import timedelta
from pathlib import Path

from models.base import utcnow
from models.db import session_scope
from models.files import expire_files, expire_uploads
from models.tables import File, Job, Organization, Upload, UploadPart
from tunegate.settings import get_settings
from tunegate.storage import Storage, get_storage


def _org() -> str:
    with session_scope() as s:
        org = Organization(name="o", policy={})
        s.add(org)
        s.flush()
        return org.id


def _file(storage: Storage, org_id: str, content: bytes, *, expired: bool) -> tuple[str, str]:
    key = storage.commit(storage.stage(io.BytesIO(content), max_bytes=1 << 20))
    when = utcnow() + timedelta(seconds=-1 if expired else 3600)
    with session_scope() as s:
        row = File(
            org_id=org_id,
            filename="f",
            purpose="fine-tune",
            bytes=len(content),
            sha256="0" * 64,
            storage_key=key,
            status="processed",
            expires_at=when,
        )
        s.add(row)
        s.flush()
        return row.id, key


def test_expired_files_are_deleted_once_and_a_trained_on_object_stays(migrated_home: Path) -> None:
    storage, org_id = get_storage(), _org()
    gone, gone_key = _file(storage, org_id, b"a", expired=True)
    used, used_key = _file(storage, org_id, b"b", expired=True)
    live, live_key = _file(storage, org_id, b"c", expired=False)
    with session_scope() as s:
        s.add(Job(org_id=org_id, model="m", training_file=used, status="running"))
    assert sorted(expire_files(storage)) == sorted([gone, used])
    assert expire_files(storage) == []
    assert not storage.path(gone_key).exists()
    assert storage.path(
        used_key
    ).exists()  # the running job still reads it (the startup sweep removes it later)
    assert storage.path(live_key).exists()
    with session_scope() as s:
        assert [s.get(File, i).deleted_at is not None for i in (gone, used, live)] == [True, True, False]  # type: ignore[union-attr]


def test_expired_uploads_lose_their_parts_and_a_completing_one_is_given_time(migrated_home: Path) -> None:
    storage, org_id, settings = get_storage(), _org(), get_settings()
    now = utcnow()
    ids, keys = {}, {}
    for name, status, expires in (
        ("old", "pending", now - timedelta(seconds=1)),
        ("fresh", "pending", now + timedelta(seconds=60)),
        ("busy", "completing", now - timedelta(seconds=1)),
        ("stuck", "completing", now - timedelta(seconds=settings.upload_expiry_s + 1)),
    ):
        key = storage.commit(storage.stage(io.BytesIO(name.encode()), max_bytes=100))
        with session_scope() as s:
            up = Upload(
                org_id=org_id,
                filename=name,
                purpose="user_data",
                mime_type="text/plain",
                bytes=10,
                status=status,
                expires_at=expires,
            )
            s.add(up)
            s.flush()
            s.add(UploadPart(upload_id=up.id, bytes=len(name), storage_key=key))
            ids[name], keys[name] = up.id, key
    assert sorted(expire_uploads(storage, settings)) == sorted([ids["old"], ids["stuck"]])
    assert expire_uploads(storage, settings) == []
    for name in ("old", "stuck"):
        assert not storage.path(keys[name]).exists()
    for name in ("fresh", "busy"):
        assert storage.path(keys[name]).exists()
    with session_scope() as s:
        assert s.get(Upload, ids["old"]).status == "expired"  # type: ignore[union-attr]
        assert s.get(Upload, ids["busy"]).status == "completing"  # type: ignore[union-attr]
