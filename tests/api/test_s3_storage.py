"""The API with its files and artifacts in an S3-compatible object store (moto on 127.0.0.1): uploads go to
the bucket (nothing under the local files directory), downloads, the adapter archive and the safety report
are read back from it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import openai
import pytest

from tests.api.conftest import _reset, chat, good_file, jsonl, new_key, processed_file, release_job, sdk
from tests.api.server import Server, run_server
from tests.utils.reports import small_report_json
from tests.utils.s3 import bucket_keys, new_bucket
from tunegate.report import ReportMitigation

MODEL = "smollm2-135m"


@pytest.fixture(scope="module")
def s3_server(
    s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, dict[str, str]]]:
    home = tmp_path_factory.mktemp("home-s3")
    env = new_bucket(s3_endpoint)
    with ExitStack() as stack:
        mp = stack.enter_context(pytest.MonkeyPatch.context())
        for k, v in {**env, "TUNEGATE_HOME": str(home), "TUNEGATE_LOG_LEVEL": "WARNING"}.items():
            mp.setenv(k, v)
        for var in ("TUNEGATE_DATABASE_URL", "TUNEGATE_BROKER_URL"):
            mp.delenv(var, raising=False)
        mp.setenv("TUNEGATE_MIN_EXAMPLES", "10")
        mp.setenv("TUNEGATE_MAX_UPLOAD_PART_BYTES", str(64 * 1024))
        _reset()
        stack.callback(_reset)
        import migrations

        migrations.upgrade()
        base_url = stack.enter_context(run_server())
        yield Server(base_url=base_url, home=home, backend="sqlite"), env


@pytest.fixture
def s3_client(s3_server: tuple[Server, dict[str, str]]) -> openai.OpenAI:
    return sdk(s3_server[0], new_key())


def _local_objects(home: Path) -> list[Path]:
    files = home / "files"
    return [p for p in files.rglob("*") if p.is_file() and "tmp" not in p.relative_to(files).parts]


def test_files_and_uploads_live_in_the_bucket(
    s3_client: openai.OpenAI, s3_server: tuple[Server, dict[str, str]]
) -> None:
    server, env = s3_server
    content = good_file()
    fid = processed_file(s3_client, content)
    assert s3_client.files.content(fid).read() == content
    big = jsonl([chat(i, note="x" * 3000) for i in range(40)])
    upload = s3_client.uploads.upload_file_chunked(
        file=big,
        filename="big.jsonl",
        bytes=len(big),
        mime_type="text/jsonl",
        purpose="fine-tune",
        part_size=40_000,
    )
    assert upload.status == "completed" and upload.file is not None
    done = s3_client.files.wait_for_processing(upload.file.id, poll_interval=0.05, max_wait_seconds=30)
    assert done.status == "processed", done.status_details
    assert s3_client.files.content(done.id).read() == big
    stored = [k for k in bucket_keys(env) if k.startswith("files/")]
    assert len(stored) == 2  # the two files; the upload's parts were removed once assembled
    assert _local_objects(server.home) == []
    s3_client.files.delete(fid)
    s3_client.files.delete(done.id)
    assert [k for k in bucket_keys(env) if k.startswith("files/")] == []


def test_released_artifacts_served_from_the_bucket(
    s3_client: openai.OpenAI, s3_server: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    """What the gate does with an object store: the adapter, a checkpoint's adapter and the report are
    published under jobs/<id>/ and the rows hold their keys; the local copies are then gone (another
    machine), and the API serves everything from the bucket."""
    from api.services.moderation import report_summary
    from models.db import session_scope
    from models.tables import Checkpoint, Job
    from tunegate.settings import get_settings
    from tunegate.storage import artifact_publisher

    server, env = s3_server
    job = s3_client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(s3_client))
    local = tmp_path / "artifacts"
    release_job(job.id, local)
    report_in = small_report_json(mitigation=ReportMitigation(n_dropped=2))
    (local / "report.json").write_text(json.dumps(report_in))
    publish = artifact_publisher(get_settings(), job.id)
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.adapter_path = publish(local / "adapter", "train/adapter")
        row.report_path = publish(local / "report.json", "gate/report.json")
        ckpt_ref = publish(local / "adapter", "checkpoints/epoch-1/adapter").removesuffix("/adapter")
        session.add(Checkpoint(job_id=job.id, step_number=3, metrics={}, path=ckpt_ref))
    assert {f"jobs/{job.id}/gate/report.json", f"jobs/{job.id}/train/adapter/adapter_config.json"} <= set(
        bucket_keys(env)
    )
    for p in sorted(local.rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()

    raw = s3_client.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
    assert members[f"{job.id}-adapter/adapter_model.safetensors"] == b"\x00" * 64
    assert json.loads(members[f"{job.id}-adapter/adapter_config.json"])["r"] == 8
    ckpt = next(iter(s3_client.fine_tuning.jobs.checkpoints.list(job.id)))
    raw = s3_client.get(f"/fine_tuning/jobs/{job.id}/checkpoints/{ckpt.id}/adapter", cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        assert f"{job.id}-step-3-adapter/adapter_config.json" in tar.getnames()
    report = s3_client.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
    assert report == report_in
    with session_scope() as session:  # the console's queue reads the same object
        row = session.get(Job, job.id)
        assert row is not None and report_summary(row).repaired is True
    html = s3_client.get(f"/fine_tuning/jobs/{job.id}/safety_report.html", cast_to=str)
    assert "<html" in html.lower()
    assert "s3://" not in html and env["TUNEGATE_S3_ENDPOINT_URL"] not in html


def test_missing_objects_are_clean_404s(
    s3_client: openai.OpenAI, s3_server: tuple[Server, dict[str, str]], tmp_path: Path
) -> None:
    from models.db import session_scope
    from models.tables import Job

    job = s3_client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(s3_client))
    release_job(job.id, tmp_path / "artifacts")
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        row.adapter_path, row.report_path = f"jobs/{job.id}/train/adapter", f"jobs/{job.id}/gate/report.json"
    with pytest.raises(openai.NotFoundError) as adapter_err:
        s3_client.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    assert adapter_err.value.code == "adapter_missing" and "jobs/" not in str(adapter_err.value)
    with pytest.raises(openai.NotFoundError) as report_err:
        s3_client.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
    assert report_err.value.code == "report_not_ready"
