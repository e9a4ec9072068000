"""Where uploaded files live: a small interface and the local implementation.

An upload is first *staged* (streamed to a temporary ``.part`` file while hashing and counting bytes),
checked, and only then *committed* (renamed into place) or *discarded*. Nothing half-written is ever visible
under a key. An S3-compatible store can implement the same operations.

Every commit gets a key of its own (``ab/cd/<sha256>.<random>``): stored objects are never shared between
file rows, so deleting one organization's file can never remove bytes another row points to, whatever the
timing. (Rows written before this rule keep their content-addressed keys ``ab/cd/<sha256>``; no new row can
point at such a key, so the set of rows sharing one only shrinks.)

``sweep`` removes what a crash can leave behind: stale ``.part`` files and objects no row references.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import secrets
import tempfile
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from tunegate.artifacts import write_all
from tunegate.errors import NotFound, PayloadTooLarge, StorageFull
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TMP_DIR = "tmp"
PART_SUFFIX = ".part"


class ObjectMissing(NotFound):
    """A key whose object is gone. The message never names the key (tenants see it); ``key`` is for logs."""

    def __init__(self, key: str) -> None:
        super().__init__("the stored content of this file is missing", code="file_content_missing")
        self.key = key


@dataclass
class Staged:
    """An upload written to a temporary file, not yet visible under any key."""

    tmp_path: Path
    size: int
    sha256: str

    def open(self) -> BinaryIO:
        return self.tmp_path.open("rb")


class StagingWriter:
    """Bytes written to a ``.part`` temp file while hashing and counting them; nothing is visible under a
    key until the staged file is committed. ``abort`` (or a failed write) removes the temp file."""

    def __init__(self, tmp_dir: Path, *, max_bytes: int) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=PART_SUFFIX)
        self.path = Path(name)
        self.max_bytes = max_bytes
        self.size = 0
        self.digest = hashlib.sha256()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self.max_bytes:
            self.abort()
            raise PayloadTooLarge(f"file is larger than the limit of {self.max_bytes} bytes", param="file")
        self.digest.update(data)
        try:
            write_all(self.fd, data)
        except OSError as exc:
            self.abort()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StorageFull("the server has no space left to store this file; retry later") from exc
            raise

    def finish(self) -> Staged:
        try:
            os.fsync(self.fd)
        except OSError:
            self.abort()
            raise
        self._close()
        return Staged(tmp_path=self.path, size=self.size, sha256=self.digest.hexdigest())

    def abort(self) -> None:
        self._close()
        self.path.unlink(missing_ok=True)

    def _close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


@dataclass(frozen=True)
class SweepReport:
    parts_removed: int
    orphans_removed: int


class Storage(Protocol):
    def begin(self, *, max_bytes: int) -> StagingWriter: ...

    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged: ...

    def commit(self, staged: Staged) -> str: ...

    def discard(self, staged: Staged) -> None: ...

    def open(self, key: str) -> BinaryIO: ...

    def path(self, key: str) -> Path: ...

    def delete(self, key: str) -> None: ...

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport: ...


class LocalStorage:
    """Files under ``root``: key ``ab/cd/<sha256>.<random>``; temp files in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / TMP_DIR

    def begin(self, *, max_bytes: int) -> StagingWriter:
        """A writer that stages bytes as they arrive (``finish`` or ``abort`` it)."""
        return StagingWriter(self.tmp_dir, max_bytes=max_bytes)

    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged:
        """Copy ``stream`` to a temp file in constant memory; ``PayloadTooLarge`` past ``max_bytes``,
        ``StorageFull`` when the disk is full (the partial temp file is removed either way)."""
        writer = self.begin(max_bytes=max_bytes)
        try:
            while chunk := stream.read(CHUNK):
                writer.write(chunk)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def commit(self, staged: Staged) -> str:
        """Rename the staged file to a fresh key of its own (never one another row could hold)."""
        key = f"{staged.sha256[:2]}/{staged.sha256[2:4]}/{staged.sha256}.{secrets.token_hex(8)}"
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.tmp_path, target)  # 64 random bits: no other row ever holds this key
        return key

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents or p.parent == self.tmp_dir.resolve():
            log.warning("storage key %r points outside the store", key)
            raise ObjectMissing(key)
        return p

    def open(self, key: str) -> BinaryIO:
        p = self.path(key)
        if not p.is_file():
            log.warning("stored object %r is missing", key)
            raise ObjectMissing(key)
        return p.open("rb")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport:
        """Remove ``.part`` temp files and objects not in ``live_keys``, if older than ``older_than_s``.

        The age guard keeps what an upload in flight (in this or another API process) has written but not
        yet recorded.
        """
        cutoff = time.time() - older_than_s
        live = {str((self.root / k).resolve()) for k in live_keys}
        parts = orphans = 0
        if self.tmp_dir.is_dir():
            for p in self.tmp_dir.iterdir():
                if p.name.endswith(PART_SUFFIX) and p.is_file() and p.stat().st_mtime <= cutoff:
                    p.unlink(missing_ok=True)
                    parts += 1
        if not self.root.is_dir():
            return SweepReport(parts, orphans)
        if not live_keys:  # e.g. a fresh database pointed at an existing store: remove nothing on a guess
            log.warning("storage sweep: no row references any object; not removing orphaned objects")
            return SweepReport(parts, orphans)
        for top in self.root.iterdir():
            if top.name == TMP_DIR or not top.is_dir():
                continue
            for p in top.rglob("*"):
                if p.is_file() and str(p.resolve()) not in live and p.stat().st_mtime <= cutoff:
                    log.info("removing orphaned stored object %s", p.relative_to(self.root))
                    p.unlink(missing_ok=True)
                    orphans += 1
        return SweepReport(parts, orphans)


def get_storage(settings: Settings | None = None) -> Storage:
    settings = settings or get_settings()
    return LocalStorage(settings.files_path)
