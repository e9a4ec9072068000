"""LocalStorage: staged uploads become visible only on commit; limits and discards leave nothing behind."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from tunegate.errors import NotFound, PayloadTooLarge
from tunegate.storage import LocalStorage


def test_stage_commit_open_delete(tmp_path: Path) -> None:
    store = LocalStorage(tmp_path / "files")
    data = b"hello\n" * 100_000  # several chunks
    staged = store.stage(io.BytesIO(data), max_bytes=len(data))
    assert staged.size == len(data) and staged.sha256 == hashlib.sha256(data).hexdigest()
    key = store.commit(staged)
    assert key.endswith(staged.sha256) and not staged.tmp_path.exists()
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
