"""Distributed mode without a shared disk: the API and the Celery worker have different homes and share only
PostgreSQL, Redis and an S3-compatible bucket (moto on 127.0.0.1). The training file goes API -> bucket ->
the worker's file cache; the adapter, a checkpoint's adapter and the report go worker -> bucket -> API."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tests.e2e.harness import chat_rows, e2e_stack, finish, overrides, upload
from tests.utils.s3 import bucket_keys, new_bucket

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


def test_job_through_an_object_store(s3_endpoint: str, tmp_path: Path) -> None:
    api_home, worker_home = tmp_path / "api-home", tmp_path / "worker-home"
    s3 = new_bucket(s3_endpoint)
    settings_env = {k.removeprefix("TUNEGATE_").lower(): v for k, v in s3.items()}
    with e2e_stack("distributed", api_home, **settings_env) as stack:
        stack.start_worker(
            env={
                "TUNEGATE_HOME": str(worker_home),
                "TUNEGATE_STAGE_OVERRIDES": json.dumps(overrides(worker_home)),
            }
        )
        sdk = stack.sdk("s3-org")
        job = sdk.fine_tuning.jobs.create(
            model="tiny", training_file=upload(sdk, chat_rows(12)), hyperparameters={"n_epochs": 1}
        )
        done = finish(sdk, job.id, stack)
        assert done.status == "succeeded", (done.error, stack.worker_logs())

        raw = sdk.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            names = set(tar.getnames())
            config = tar.extractfile(f"{job.id}-adapter/adapter_config.json")
            assert config is not None and json.loads(config.read())["base_model_name_or_path"] == "tiny"
        assert f"{job.id}-adapter/adapter_model.safetensors" in names
        ckpt = next(iter(sdk.fine_tuning.jobs.checkpoints.list(job.id)))
        raw = sdk.get(f"/fine_tuning/jobs/{job.id}/checkpoints/{ckpt.id}/adapter", cast_to=bytes)
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
            assert any(n.endswith("adapter_model.safetensors") for n in tar.getnames())
        report = sdk.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
        assert isinstance(report, dict) and report["decision"]["released"] is True
        html = sdk.get(f"/fine_tuning/jobs/{job.id}/safety_report.html", cast_to=str)
        assert job.id in html

    keys = bucket_keys(s3)
    assert f"jobs/{job.id}/gate/report.json" in keys and f"jobs/{job.id}/gate/report.html" in keys
    assert any(k.startswith(f"jobs/{job.id}/train/adapter/") for k in keys)
    assert any(k.startswith(f"jobs/{job.id}/checkpoints/epoch-1/adapter/") for k in keys)
    assert any(k.startswith("files/") for k in keys)
    # no shared disk: the API never wrote job artifacts, the worker never stored an upload
    assert not (api_home / "jobs").exists() or not any((api_home / "jobs").iterdir())
    assert (worker_home / "jobs" / job.id / "train" / "adapter").is_dir()  # kept for resume
    assert not [p for p in (worker_home / "files").rglob("*") if p.is_file()]
    assert [p for p in (worker_home / "file-cache").rglob("*") if p.is_file()]
