"""Where uploaded files live: a small interface and the local, content-addressed implementation.

An upload is first *staged* (streamed to a temporary file while hashing and counting bytes), checked, and only
then *committed* (renamed into place under its sha256) or *discarded*. Nothing half-written is ever visible
under a key. An S3-compatible store can implement the same four operations.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from tunegate.errors import NotFound, PayloadTooLarge
from tunegate.settings import Settings, get_settings

CHUNK = 1 << 20
log = logging.getLogger(__name__)


@dataclass
class Staged:
    """An upload written to a temporary file, not yet visible under any key."""

    tmp_path: Path
    size: int
    sha256: str

    def open(self) -> BinaryIO:
        return self.tmp_path.open("rb")


class Storage(Protocol):
    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged: ...

    def commit(self, staged: Staged) -> str: ...

    def discard(self, staged: Staged) -> None: ...

    def open(self, key: str) -> BinaryIO: ...

    def path(self, key: str) -> Path: ...

    def delete(self, key: str) -> None: ...


class LocalStorage:
    """Content-addressed files under ``root``: key ``ab/cd/<sha256>``; temp files in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"

    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged:
        """Copy ``stream`` to a temp file in constant memory; ``PayloadTooLarge`` past ``max_bytes``."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=".part")
        digest, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise PayloadTooLarge(
                            f"file is larger than the limit of {max_bytes} bytes", param="file"
                        )
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return Staged(tmp_path=Path(name), size=size, sha256=digest.hexdigest())

    def commit(self, staged: Staged) -> str:
        key = f"{staged.sha256[:2]}/{staged.sha256[2:4]}/{staged.sha256}"
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged.tmp_path, target)  # same content under the same key: replacing is harmless
        return key

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            log.warning("storage key %r points outside the store", key)
            raise NotFound("no such stored object")  # keys are internal: never in a message
        return p

    def open(self, key: str) -> BinaryIO:
        p = self.path(key)
        if not p.is_file():
            log.warning("stored object %r is missing", key)
            raise NotFound("a stored file is missing")
        return p.open("rb")

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)


def get_storage(settings: Settings | None = None) -> Storage:
    settings = settings or get_settings()
    return LocalStorage(settings.files_path)
