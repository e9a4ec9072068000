"""Where uploaded files and published job artifacts live: one interface, a local and an object-store
implementation.

An upload is first *staged* (streamed to a temporary ``.part`` file while hashing and counting bytes),
checked, and only then *committed* (renamed into place) or *discarded*. Nothing half-written is ever visible
under a key. ``LocalStorage`` keeps objects under the files directory; ``ObjectStorage`` (fsspec, e.g. s3fs
for ``storage_url = s3://bucket/prefix``) stages on the local disk the same way and uploads on commit
(multipart, constant memory), so the API and the workers need no shared disk. A worker reads a training file
through ``materialize`` (a local copy per key: keys are never reused, so a copy is never stale).

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
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from tunegate.artifacts import write_all
from tunegate.errors import NotFound, PayloadTooLarge, StorageFull, StorageUnavailable
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

    def materialize(self, key: str, cache_dir: Path) -> Path: ...

    def delete(self, key: str) -> None: ...

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport: ...


def sweep_parts(tmp_dir: Path, cutoff: float) -> int:
    """Remove the ``.part`` temp files in ``tmp_dir`` last written before ``cutoff``; how many."""
    parts = 0
    if tmp_dir.is_dir():
        for p in tmp_dir.iterdir():
            if p.name.endswith(PART_SUFFIX) and p.is_file() and p.stat().st_mtime <= cutoff:
                p.unlink(missing_ok=True)
                parts += 1
    return parts


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
        return self.materialize(key, self.root).open("rb")

    def materialize(self, key: str, cache_dir: Path) -> Path:
        """The object's own file (already local: ``cache_dir`` is not used)."""
        del cache_dir
        p = self.path(key)
        if not p.is_file():
            log.warning("stored object %r is missing", key)
            raise ObjectMissing(key)
        return p

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport:
        """Remove ``.part`` temp files and objects not in ``live_keys``, if older than ``older_than_s``.

        The age guard keeps what an upload in flight (in this or another API process) has written but not
        yet recorded.
        """
        cutoff = time.time() - older_than_s
        live = {str((self.root / k).resolve()) for k in live_keys}
        parts, orphans = sweep_parts(self.tmp_dir, cutoff), 0
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


FILES = "files"  # the uploads' prefix in an object store (job artifacts go under "jobs/")
JOBS = "jobs"


def _checked_key(key: str) -> str:
    """A relative key without ``..`` or empty parts (keys come from our rows, never from a client)."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        log.warning("storage key %r is not a plain relative key", key)
        raise ObjectMissing(key)
    return key


class _Failures:
    """Re-raise an object store's failures (other than a missing object) as ``StorageUnavailable``."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        if exc is None or isinstance(exc, FileNotFoundError | ObjectMissing | StorageUnavailable):
            return
        if isinstance(exc, Exception):  # any client, HTTP or connection error of the store's library
            log.warning("object store operation failed: %r", exc)
            raise StorageUnavailable("the file store is unavailable; retry later") from exc


class ObjectStore:
    """Objects under ``root`` (``bucket/prefix``) of an fsspec filesystem, addressed by relative keys; a
    failure of the store other than a missing object raises ``StorageUnavailable``."""

    def __init__(self, fs: Any, root: str) -> None:
        self.fs = fs
        self.root = root.strip("/")
        self.failures = _Failures()

    def full(self, key: str) -> str:
        return f"{self.root}/{_checked_key(key)}"

    def put_file(self, local: Path, key: str) -> None:
        """Upload one file (s3fs sends a large one in parts: constant memory)."""
        with self.failures:
            self.fs.put_file(str(local), self.full(key))

    def put(self, local: Path, key: str) -> None:
        """Upload a file, or every file of a directory tree under ``key/``."""
        if local.is_dir():
            for p in sorted(local.rglob("*")):
                if p.is_file() and not p.is_symlink():
                    self.put_file(p, f"{key}/{p.relative_to(local).as_posix()}")
        else:
            self.put_file(local, key)

    def open(self, key: str) -> BinaryIO:
        """A streaming reader (fetched in blocks as it is read)."""
        try:
            with self.failures:
                return self.fs.open(self.full(key), "rb")  # type: ignore[no-any-return]
        except FileNotFoundError:
            log.warning("stored object %r is missing", key)
            raise ObjectMissing(key) from None

    def info(self, key: str) -> dict[str, Any] | None:
        try:
            with self.failures:
                return dict(self.fs.info(self.full(key)))
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        info = self.info(key)
        return info is not None and info.get("type") == "file"

    def size(self, key: str) -> int:
        info = self.info(key)
        if info is None or info.get("type") != "file":
            raise ObjectMissing(key)
        return int(info["size"])

    def listing(self, key: str) -> dict[str, dict[str, Any]]:
        """Every object under ``key/``: relative key -> its info (size, LastModified, ETag)."""
        try:
            with self.failures:
                found = self.fs.find(self.full(key), detail=True)
        except FileNotFoundError:
            return {}
        return {path[len(self.root) + 1 :]: dict(info) for path, info in found.items()}

    def get_file(self, key: str, dest: Path) -> Path:
        """Download to ``dest`` through a temp file beside it (a reader never sees half a file)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with self.failures:
                self.fs.get_file(self.full(key), str(tmp))
            os.replace(tmp, dest)
        except FileNotFoundError:
            log.warning("stored object %r is missing", key)
            raise ObjectMissing(key) from None
        finally:
            tmp.unlink(missing_ok=True)
        return dest

    def get_tree(self, key: str, dest: Path) -> Path:
        """Download every object under ``key/`` into ``dest`` (``ObjectMissing`` when there is none)."""
        objects = self.listing(key)
        if not objects:
            raise ObjectMissing(key)
        for sub in objects:
            self.get_file(sub, dest / sub[len(key) + 1 :])
        return dest

    def delete(self, key: str) -> None:
        try:
            with self.failures:
                self.fs.rm_file(self.full(key))
        except FileNotFoundError:
            pass  # already gone: deleting is idempotent


def _modified(info: dict[str, Any]) -> float:
    value = info.get("LastModified") or info.get("mtime") or info.get("created")
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else time.time()


class ObjectStorage:
    """Uploads in an object store under ``files/<key>``; staged on the local disk (``tmp_dir``) while they
    are received and checked, uploaded on commit."""

    def __init__(self, store: ObjectStore, tmp_dir: Path) -> None:
        self.store = store
        self.tmp_dir = tmp_dir

    def begin(self, *, max_bytes: int) -> StagingWriter:
        return StagingWriter(self.tmp_dir, max_bytes=max_bytes)

    def stage(self, stream: BinaryIO, *, max_bytes: int) -> Staged:
        return LocalStorage(self.tmp_dir.parent).stage(stream, max_bytes=max_bytes)

    def commit(self, staged: Staged) -> str:
        key = f"{staged.sha256[:2]}/{staged.sha256[2:4]}/{staged.sha256}.{secrets.token_hex(8)}"
        self.store.put_file(staged.tmp_path, f"{FILES}/{key}")
        staged.tmp_path.unlink(missing_ok=True)
        return key

    def discard(self, staged: Staged) -> None:
        staged.tmp_path.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        return self.store.open(f"{FILES}/{_checked_key(key)}")

    def materialize(self, key: str, cache_dir: Path) -> Path:
        """A local copy of the object in ``cache_dir/<key>`` (downloaded once: a key is never reused)."""
        dest = cache_dir / _checked_key(key)
        if dest.is_file():
            return dest
        return self.store.get_file(f"{FILES}/{key}", dest)

    def delete(self, key: str) -> None:
        self.store.delete(f"{FILES}/{_checked_key(key)}")

    def sweep(self, live_keys: Collection[str], *, older_than_s: float) -> SweepReport:
        """As ``LocalStorage.sweep``: local ``.part`` files, then objects under ``files/`` no row names."""
        cutoff = time.time() - older_than_s
        parts = sweep_parts(self.tmp_dir, cutoff)
        if not live_keys:
            log.warning("storage sweep: no row references any object; not removing orphaned objects")
            return SweepReport(parts, 0)
        orphans = 0
        for sub, info in self.store.listing(FILES).items():
            key = sub[len(FILES) + 1 :]
            if key not in live_keys and _modified(info) <= cutoff:
                log.info("removing orphaned stored object %s", key)
                self.store.delete(sub)
                orphans += 1
        return SweepReport(parts, orphans)


def object_store(settings: Settings) -> ObjectStore | None:
    """The configured object store (``storage_url``), or None for the local disk."""
    if settings.storage_url is None:
        return None
    import fsspec  # deferred: s3fs pulls in aiobotocore, which a local setup never needs

    options: dict[str, Any] = {"skip_instance_cache": True, "use_listings_cache": False}
    if settings.s3_endpoint_url:
        options["endpoint_url"] = settings.s3_endpoint_url
    if settings.s3_access_key_id:
        options["key"] = settings.s3_access_key_id
    if settings.s3_secret_access_key:
        options["secret"] = settings.s3_secret_access_key
    if settings.s3_region:
        options["client_kwargs"] = {"region_name": settings.s3_region}
    fs = fsspec.filesystem("s3", **options)
    return ObjectStore(fs, settings.storage_url[len("s3://") :])


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


def open_artifact(settings: Settings, ref: str) -> BinaryIO:
    """Read a published artifact file (``ObjectMissing`` when it is gone)."""
    store = object_store(settings) if is_stored(ref) else None
    if store is not None:
        return store.open(ref)
    p = Path(ref)
    if not p.is_file():
        raise ObjectMissing(ref)
    return p.open("rb")


def artifact_version(settings: Settings, ref: str) -> str | None:
    """A token that changes when the artifact is rewritten (None: it is missing)."""
    store = object_store(settings) if is_stored(ref) else None
    if store is not None:
        info = store.info(ref)
        return None if info is None else f"{info.get('ETag')}:{info.get('size')}"
    try:
        return str(Path(ref).stat().st_mtime_ns) if Path(ref).is_file() else None
    except OSError:
        return None


def fetch_tree(settings: Settings, ref: str, dest: Path) -> Path:
    """A published directory on the local disk: its own path (local store), or downloaded into ``dest``."""
    store = object_store(settings) if is_stored(ref) else None
    if store is not None:
        return store.get_tree(ref, dest)
    if not Path(ref).is_dir():
        raise ObjectMissing(ref)
    return Path(ref)


def tree_exists(settings: Settings, ref: str) -> bool:
    """Whether a published directory still has its files."""
    store = object_store(settings) if is_stored(ref) else None
    if store is not None:
        return bool(store.listing(ref))
    return Path(ref).is_dir()
