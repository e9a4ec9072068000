"""LocalStorage: staged uploads become visible only on commit; limits and discards leave nothing behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
from pathlib import Path

import pytest

from tunegate.errors import NotFound, PayloadTooLarge, StorageFull
from tunegate.storage import LocalStorage, SweepReport


def test_stage_commit_open_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    data = b"hello\n" * 100_000  # several chunks
    staged = store.stage(io.BytesIO(data), max_bytes=len(data))
    assert staged.size == len(data) and staged.sha256 == hashlib.sha256(data).hexdigest()
    key = store.commit(staged)
    assert staged.sha256 in key and not staged.tmp_path.exists()
    with store.open(key) as fh:
        assert fh.read() == data
    store.delete(key)
    with pytest.raises(NotFound):
        store.open(key)


def test_over_limit_and_discard_leave_no_temp_files(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    with pytest.raises(PayloadTooLarge):
        store.stage(io.BytesIO(b"x" * 5000), max_bytes=4999)
    staged = store.stage(io.BytesIO(b"abc"), max_bytes=10)
    store.discard(staged)
    assert list((tmp_path / "files").rglob("*.part")) == []


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    (tmp_path / "secret").write_text("s")
    with pytest.raises(NotFound):
        store.open("../secret")


def test_identical_content_never_shares_a_key(tmp_path: Path) -> None:
    """Each commit owns its object: deleting one never removes bytes another key points to."""
    store = LocalStorage(tmp_path / "files")
    a = store.commit(store.stage(io.BytesIO(b"same"), max_bytes=10))
    b = store.commit(store.stage(io.BytesIO(b"same"), max_bytes=10))
    assert a != b
    store.delete(a)
    with store.open(b) as fh:
        assert fh.read() == b"same"


def test_missing_object_error_names_no_key(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    key = store.commit(store.stage(io.BytesIO(b"x"), max_bytes=10))
    store.delete(key)
    with pytest.raises(NotFound) as info:
        store.open(key)
    assert key not in info.value.message and key[:5] not in info.value.message


def test_disk_full_while_staging_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC raised by the real write call partway through the copy: StorageFull, and no .part left."""
    store = LocalStorage(tmp_path / "files")
    real_write = os.write
    written = {"n": 0}

    def write(fd: int, data: bytes | memoryview) -> int:
        written["n"] += len(data)
        if written["n"] > 3 << 20:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(StorageFull):
        store.stage(io.BytesIO(b"y" * (8 << 20)), max_bytes=16 << 20)
    assert written["n"] > 0 and list((tmp_path / "files").rglob("*.part")) == []


def test_sweep_removes_stale_parts_and_orphans_but_keeps_live_objects(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    live = store.commit(store.stage(io.BytesIO(b"live"), max_bytes=10))
    orphan = store.commit(store.stage(io.BytesIO(b"orphan"), max_bytes=10))
    part = store.stage(io.BytesIO(b"half"), max_bytes=10).tmp_path
    assert store.sweep({live}, older_than_s=3600) == SweepReport(0, 0)  # too young: may be in flight
    assert store.sweep({live}, older_than_s=0) == SweepReport(1, 1)
    assert not part.exists() and not store.path(orphan).exists()
    with store.open(live) as fh:
        assert fh.read() == b"live"
    store.commit(store.stage(io.BytesIO(b"unknown"), max_bytes=10))
    assert store.sweep(set(), older_than_s=0).orphans_removed == 0  # no row at all: nothing is guessed
