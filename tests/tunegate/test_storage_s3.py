"""The object-store implementation against a real S3-compatible server (moto on 127.0.0.1): uploads staged,
committed, read back in streaming chunks, materialized, deleted and swept; job artifacts published and
fetched."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.s3 import bucket_keys, new_bucket
from tunegate.errors import PayloadTooLarge, StorageUnavailable, TransientError
from tunegate.settings import Settings
from tunegate.storage import (
    CHUNK,
    ObjectMissing,
    ObjectStorage,
    SweepReport,
    artifact_publisher,
    fetch_tree,
    get_storage,
    is_stored,
    open_artifact,
    tree_exists,
)


@pytest.fixture
def s3(s3_endpoint: str, tunegate_home: Path) -> Iterator[tuple[Settings, dict[str, str]]]:
    env = new_bucket(s3_endpoint)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield Settings(), env


def test_stage_commit_stream_materialize_delete(s3: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, env = s3
    storage = get_storage(settings)
    assert isinstance(storage, ObjectStorage)
    data = os.urandom(3 * CHUNK + 123)  # several read chunks
    staged = storage.stage(io.BytesIO(data), max_bytes=len(data))
    key = storage.commit(staged)
    assert not staged.tmp_path.exists()  # the local staged copy goes once uploaded
    assert bucket_keys(env) == [f"files/{key}"]
    assert storage.store.exists(f"files/{key}") and storage.store.size(f"files/{key}") == len(data)
    assert not (settings.files_path / key).exists()  # nothing under the local files directory
    with storage.open(key) as fh:
        chunks = list(iter(lambda: fh.read(CHUNK), b""))
    assert b"".join(chunks) == data and len(chunks) == 4
    local = storage.materialize(key, tmp_path / "cache")
    assert local == tmp_path / "cache" / key and local.read_bytes() == data
    storage.delete(key)
    storage.delete(key)  # idempotent
    assert bucket_keys(env) == []
    with pytest.raises(ObjectMissing):
        storage.open(key)
    assert not storage.store.exists(f"files/{key}")
    assert storage.materialize(key, tmp_path / "cache") == local  # the cached copy of a never-reused key


def test_limit_and_bad_keys(s3: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, env = s3
    storage = get_storage(settings)
    with pytest.raises(PayloadTooLarge):
        storage.stage(io.BytesIO(b"x" * 100), max_bytes=99)
    assert bucket_keys(env) == [] and not list((settings.files_path / "tmp").glob("*.part"))
    for bad in ("../x", "/abs", "a//b", ""):
        with pytest.raises(ObjectMissing):
            storage.open(bad)
        with pytest.raises(ObjectMissing):
            storage.materialize(bad, tmp_path)


def test_sweep_removes_parts_and_orphans_only(s3: tuple[Settings, dict[str, str]]) -> None:
    settings, env = s3
    storage = get_storage(settings)
    live = storage.commit(storage.stage(io.BytesIO(b"live"), max_bytes=10))
    orphan = storage.commit(storage.stage(io.BytesIO(b"orphan"), max_bytes=10))
    writer = storage.begin(max_bytes=10)
    writer.write(b"half")  # an upload in flight when the process died
    publish = artifact_publisher(settings, "job-1")
    report = settings.home_dir / "report.json"
    report.write_text("{}")
    publish(report, "gate/report.json")
    assert storage.sweep({live}, older_than_s=3600) == SweepReport(0, 0)  # all too young
    assert storage.sweep(set(), older_than_s=0) == SweepReport(1, 0)  # no live rows: no object removed
    assert storage.sweep({live}, older_than_s=0) == SweepReport(0, 1)
    assert bucket_keys(env) == sorted([f"files/{live}", "jobs/job-1/gate/report.json"])
    assert orphan not in str(bucket_keys(env))


def test_artifacts_published_and_read_back(s3: tuple[Settings, dict[str, str]], tmp_path: Path) -> None:
    settings, env = s3
    adapter = tmp_path / "train" / "adapter"
    (adapter / "sub").mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "sub" / "weights.bin").write_bytes(os.urandom(2000))
    publish = artifact_publisher(settings, "job-9")
    ref = publish(adapter, "train/adapter")
    assert ref == "jobs/job-9/train/adapter" and is_stored(ref)
    assert tree_exists(settings, ref) and not tree_exists(settings, "jobs/job-9/nothing")
    got = fetch_tree(settings, ref, tmp_path / "fetched")
    assert {p.relative_to(got).as_posix(): p.read_bytes() for p in got.rglob("*") if p.is_file()} == {
        p.relative_to(adapter).as_posix(): p.read_bytes() for p in adapter.rglob("*") if p.is_file()
    }
    with open_artifact(settings, f"{ref}/adapter_config.json") as fh:
        assert fh.read() == b'{"r": 8}'
    with pytest.raises(ObjectMissing):
        open_artifact(settings, "jobs/job-9/missing.json")
    with pytest.raises(ObjectMissing):
        fetch_tree(settings, "jobs/job-9/missing", tmp_path / "none")


def test_local_store_keeps_local_paths(tunegate_home: Path, tmp_path: Path) -> None:
    settings = Settings()
    report = tmp_path / "report.json"
    report.write_text("{}")
    ref = artifact_publisher(settings, "job-1")(report, "gate/report.json")
    assert ref == str(report) and not is_stored(ref)
    with open_artifact(settings, ref) as fh:
        assert fh.read() == b"{}"
    assert fetch_tree(settings, str(tmp_path), tmp_path / "unused") == tmp_path


def test_an_unreachable_store_is_a_transient_error(tunegate_home: Path, tmp_path: Path) -> None:
    """Nothing listens on the endpoint: every operation raises the retryable ``StorageUnavailable``, whose
    message names no host."""
    from tests.api.server import free_port

    settings = Settings(
        storage_url="s3://nowhere/tg",
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
        s3_access_key_id="k",
        s3_secret_access_key="s",
        s3_region="us-east-1",
    )
    storage = get_storage(settings)
    staged = storage.stage(io.BytesIO(b"data"), max_bytes=10)
    with pytest.raises(StorageUnavailable) as err:
        storage.commit(staged)
    assert "127.0.0.1" not in str(err.value) and isinstance(err.value, TransientError)
    with pytest.raises(StorageUnavailable):
        storage.materialize("ab/cd/key", tmp_path)


@pytest.mark.parametrize("url", ["file:///x", "s3://", "gs://bucket"])
def test_storage_url_must_name_an_s3_bucket(url: str) -> None:
    with pytest.raises(ValueError, match="storage_url"):
        Settings(storage_url=url)
