"""Where uploaded files and published job artifacts live: one implementation over an fsspec filesystem, the
local disk (``LocalStorage``) or an S3-compatible object store (``ObjectStorage``, s3fs).

An upload is first *staged* (streamed to a temporary ``.part`` file while hashing and counting bytes),
checked, and only then *committed* (renamed into place on the local disk; uploaded, in parts and constant
memory, to an object store) or *discarded*. Nothing half-written is ever visible under a key, and the API
and the workers need no shared disk. A worker reads a training file through ``materialize`` (a local copy
per key: keys are never reused, so a copy is never stale).

Job artifacts (adapters, checkpoints' adapters, reports) are *published* by the stages that write them
(``artifact_publisher``): with the local store the local path is the reference, as it always was; with an
object store they are uploaded under ``jobs/<job_id>/...`` and the store key (a relative path) is the
reference the job row records. ``open_artifact`` / ``fetch_tree`` read either kind.

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
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from fsspec.implementations.local import LocalFileSystem

from tunegate.artifacts import write_all
from tunegate.errors import NotFound, PayloadTooLarge, StorageFull, StorageUnavailable
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TMP_DIR = "tmp"
PART_SUFFIX = ".part"
FILES = "files"  # the uploads' prefix in an object store (job artifacts go under "jobs/")
JOBS = "jobs"


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

    # Our own: no library hashes, caps the size and maps a full disk while it streams to a temp file.
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


def sweep_parts(tmp_dir: Path, cutoff: float) -> int:
    """Remove the ``.part`` temp files in ``tmp_dir`` last written before ``cutoff``; how many."""
    # Our own: staged uploads are plain local files (StagingWriter) whatever the store.
    stale = [p for p in tmp_dir.glob(f"*{PART_SUFFIX}") if p.is_file() and p.stat().st_mtime <= cutoff]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _checked_key(key: str) -> str:
    """A relative key without ``..`` or empty parts (keys come from our rows, never from a client)."""
    # Our own: fsspec joins whatever path it is given, ``..`` included.
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        log.warning("storage key %r is not a plain relative key", key)
        raise ObjectMissing(key)
    return key


@contextmanager
def _failures(key: str) -> Iterator[None]:
    """A missing object raises ``ObjectMissing``; any other failure of the store ``StorageUnavailable``."""
    # Our own: fsspec passes on each backend's errors (botocore's, aiohttp's, OSError) as they are.
    try:
        yield
    except FileNotFoundError:
        raise ObjectMissing(key) from None
    except (ObjectMissing, StorageUnavailable):
        raise
    except Exception as exc:  # any client, HTTP, connection or OS error of the store's library
        log.warning("file store operation on %r failed: %r", key, exc)
        raise StorageUnavailable("the file store is unavailable; retry later") from exc


@dataclass(frozen=True)
class ObjectInfo:
    """What the store says of one object (or directory): fsspec's info, whose keys differ by backend."""

    kind: str  # "file" or "directory"
    size: int | None
    etag: str | None  # the object store's (none on the local disk)
    modified: float | None  # unix seconds of its last change (None: the store does not say)

    @classmethod
    def of(cls, info: Mapping[str, object]) -> ObjectInfo:
        kind, size, etag = info.get("type"), info.get("size"), info.get("ETag")
        return cls(
            kind=kind if isinstance(kind, str) else "",
            size=int(size) if isinstance(size, int | float) and not isinstance(size, bool) else None,
            etag=etag if isinstance(etag, str) else None,
            modified=_modified(info),
        )


def _modified(info: Mapping[str, object]) -> float | None:
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


class ObjectStore:
    """Objects under ``root`` (a directory, or ``bucket/prefix``) of an fsspec filesystem, addressed by
    relative keys: a missing object raises ``ObjectMissing``, any other failure ``StorageUnavailable``."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root: str = fs._strip_protocol(root)  # the form fsspec names paths in (find's keys)

    def full(self, key: str) -> str:
        return f"{self.root}/{_checked_key(key)}"

    def put(self, local: Path, key: str) -> None:
        """Upload a file, or every file (not link) of a directory tree under ``key/``; s3fs sends a large
        file in parts (constant memory) and several files at once."""
        if local.is_dir():
            files = sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink())
            keys = [f"{key}/{p.relative_to(local).as_posix()}" for p in files]
        else:
            files, keys = [local], [key]
        with _failures(key):  # lists, not one path: fsspec would expand a glob character in a name
            self.fs.put([str(p) for p in files], [self.full(k) for k in keys])

    def move_in(self, local: Path, key: str) -> None:
        """Move a local file to ``key``: a rename on the local disk (atomic), an upload to S3."""
        if isinstance(self.fs, LocalFileSystem):
            with _failures(key):
                self.fs.mv(str(local), self.full(key))  # shutil.move: os.rename within one filesystem
        else:
            self.put(local, key)
            local.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        """A streaming reader (from an object store, fetched in blocks as it is read)."""
        with _failures(key):
            return self.fs.open(self.full(key), "rb")  # type: ignore[no-any-return]

    def info(self, key: str) -> ObjectInfo:
        with _failures(key):
            return ObjectInfo.of(self.fs.info(self.full(key)))

    def exists(self, key: str) -> bool:
        try:
            return self.info(key).kind == "file"
        except ObjectMissing:
            return False

    def size(self, key: str) -> int:
        info = self.info(key)
        if info.kind != "file" or info.size is None:
            raise ObjectMissing(key)
        return info.size

    def listing(self, key: str = "") -> dict[str, ObjectInfo]:
        """Every object under ``key/`` (all of them without a key): relative key -> its info."""
        with _failures(key):
            found = self.fs.find(self.full(key) if key else self.root, detail=True)
        return {path[len(self.root) + 1 :]: ObjectInfo.of(info) for path, info in found.items()}

    def get_file(self, key: str, dest: Path) -> Path:
        """Download to ``dest`` through a temp file beside it (a reader never sees half a file)."""
        # Our own temp-then-rename: fsspec's get_file writes the destination in place.
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with _failures(key):
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self.full(key), str(tmp))
                os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def get_tree(self, key: str, dest: Path) -> Path:
        """Download every object under ``key/`` into the fresh directory ``dest`` (``ObjectMissing`` when
        there is none)."""
        subs = list(self.listing(key))
        if not subs:
            raise ObjectMissing(key)
        with _failures(key):
            self.fs.get([self.full(s) for s in subs], [str(dest / s[len(key) + 1 :]) for s in subs])
        return dest

    def delete(self, key: str) -> None:
        try:
            with _failures(key):
                self.fs.rm_file(self.full(key))
        except ObjectMissing:
            pass  # already gone: deleting is idempotent


class Storage:
    """Uploads as objects of ``store`` under ``prefix``, staged in ``tmp_dir`` on the local disk while they
    are received and checked (``LocalStorage`` or ``ObjectStorage``)."""

    prefix = ""

    def __init__(self, store: ObjectStore, tmp_dir: Path) -> None:
        self.store = store
        self.tmp_dir = tmp_dir

    def _key(self, key: str) -> str:
        if _checked_key(key).split("/", 1)[0] == TMP_DIR:  # the local store's temp uploads are no objects
            raise ObjectMissing(key)
        return self.prefix + key

    def begin(self, *, max_bytes: int) -> StagingWriter:
        """A writer that stages bytes as they arrive (``finish`` or ``abort`` it)."""
        return StagingWriter(self.tmp_dir, max_bytes=max_bytes)

    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged:
        """Copy ``stream`` to a temp file in constant memory; ``PayloadTooLarge`` past ``max_bytes``,
        ``StorageFull`` when the disk is full (the partial temp file is removed either way)."""
        writer = self.begin(max_bytes=max_bytes)
        try:
            shutil.copyfileobj(stream, writer, CHUNK)
            return writer.finish()
        except BaseException:
            writer.abort()
            raise

    def commit(self, staged: Staged) -> str:
        """Move the staged file to a fresh key of its own (64 random bits: never one another row holds)."""
        key = f"{staged.sha256[:2]}/{staged.sha256[2:4]}/{staged.sha256}.{secrets.token_hex(8)}"
        self.store.move_in(staged.tmp_path, self._key(key))
        return key

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        return self.store.open(self._key(key))

    def materialize(self, key: str, cache_dir: Path) -> Path:
        """A local copy of the object in ``cache_dir/<key>`` (downloaded once: a key is never reused)."""
        dest = cache_dir / _checked_key(key)
        return dest if dest.is_file() else self.store.get_file(self._key(key), dest)

    def delete(self, key: str) -> None:
        self.store.delete(self._key(key))

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport:
        """Remove ``.part`` temp files and objects not in ``live_keys``, if older than ``older_than_s``.

        The age guard keeps what an upload in flight (in this or another API process) has written but not
        yet recorded.
        """
        cutoff = time.time() - older_than_s
        parts, orphans = sweep_parts(self.tmp_dir, cutoff), 0
        if not live_keys:  # e.g. a fresh database pointed at an existing store: remove nothing on a guess
            log.warning("storage sweep: no row references any object; not removing orphaned objects")
            return SweepReport(parts, orphans)
        for sub, info in self.store.listing(self.prefix.rstrip("/")).items():
            key = sub.removeprefix(self.prefix)
            top, _, rest = key.partition("/")  # objects live in subdirectories; temp uploads are no objects
            modified = time.time() if info.modified is None else info.modified
            if rest and top != TMP_DIR and key not in live_keys and modified <= cutoff:
                log.info("removing orphaned stored object %s", key)
                self.store.delete(sub)
                orphans += 1
        return SweepReport(parts, orphans)


class LocalStorage(Storage):
    """Files under ``root``: key ``ab/cd/<sha256>.<random>``; temp files in ``root/tmp``."""

    def __init__(self, root: Path) -> None:
        super().__init__(ObjectStore(LocalFileSystem(auto_mkdir=True), str(root)), root / TMP_DIR)
        self.root = root

    def path(self, key: str) -> Path:
        return Path(self.store.full(self._key(key)))

    def materialize(self, key: str, cache_dir: Path) -> Path:
        """The object's own file (already local: ``cache_dir`` is not used)."""
        del cache_dir
        if not self.store.exists(self._key(key)):
            raise ObjectMissing(key)
        return self.path(key)


class ObjectStorage(Storage):
    """Uploads in an object store under ``files/<key>``; staged on the local disk, uploaded on commit."""

    prefix = f"{FILES}/"


def object_store(settings: Settings) -> ObjectStore | None:
    """The configured object store (``storage_url``), or None for the local disk."""
    if settings.storage_url is None:
        return None
    import fsspec  # deferred: s3fs pulls in aiobotocore, which a local setup never needs

    options: dict[str, str | bool | dict[str, str]] = {
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        options["key"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        options["secret"] = settings.s3_secret_access_key
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    return ObjectStore(fsspec.filesystem("s3", **options), settings.storage_url[len("s3://") :])


def get_storage(settings: Settings | None = None) -> Storage:
    settings = settings or get_settings()
    store = object_store(settings)
    if store is None:
        return LocalStorage(settings.files_path)
    return ObjectStorage(store, settings.files_path / TMP_DIR)


# --- job artifacts ---------------------------------------------------------------------------------------

Publish = Callable[[Path, str], str]  # (local file or directory, name under the job) -> the reference


def keep_local(local: Path, name: str) -> str:
    """The local store's publisher: the artifact stays where the stage wrote it."""
    del name
    return str(local)


def artifact_publisher(settings: Settings, job_id: str) -> Publish:
    """How a stage makes an artifact readable by the API: the local path itself (local store), or an upload
    to ``jobs/<job_id>/<name>`` whose key is the reference (object store)."""
    store = object_store(settings)
    if store is None:
        return keep_local

    def publish(local: Path, name: str) -> str:
        key = f"{JOBS}/{job_id}/{name}"
        store.put(local, key)
        return key

    return publish


def is_stored(ref: str) -> bool:
    """A reference in the object store (a relative key), not a local path."""
    return bool(ref) and not os.path.isabs(ref)


def _store_of(settings: Settings, ref: str) -> ObjectStore | None:
    """The object store holding ``ref``; None when it is a local path."""
    # A local reference is the very path its stage wrote: read in place with pathlib, nothing to fetch.
    return object_store(settings) if is_stored(ref) else None


def open_artifact(settings: Settings, ref: str) -> BinaryIO:
    """Read a published artifact file (``ObjectMissing`` when it is gone)."""
    if store := _store_of(settings, ref):
        return store.open(ref)
    if not Path(ref).is_file():
        raise ObjectMissing(ref)
    return Path(ref).open("rb")


def artifact_version(settings: Settings, ref: str) -> str | None:
    """A token that changes when the artifact is rewritten (None: it is missing)."""
    if store := _store_of(settings, ref):
        try:
            info = store.info(ref)
        except ObjectMissing:
            return None
        return f"{info.etag}:{info.size}"
    try:
        return str(Path(ref).stat().st_mtime_ns) if Path(ref).is_file() else None
    except OSError:
        return None


def fetch_tree(settings: Settings, ref: str, dest: Path) -> Path:
    """A published directory on the local disk: its own path (local store), or downloaded into ``dest``."""
    if store := _store_of(settings, ref):
        return store.get_tree(ref, dest)
    if not Path(ref).is_dir():
        raise ObjectMissing(ref)
    return Path(ref)


def tree_exists(settings: Settings, ref: str) -> bool:
    """Whether a published directory still has its files."""
    if store := _store_of(settings, ref):
        return bool(store.listing(ref))
    return Path(ref).is_dir()
