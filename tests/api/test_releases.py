"""Our extensions: /v1/models, the safety report and the adapter download (only after release)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import openai
import pytest

from models.db import session_scope
from models.jobs import JobStatus, fine_tuned_model_name, transition
from models.tables import Job, Organization
from tests.api.conftest import processed_file

MODEL = "smollm2-135m"


def _release(job_id: str, artifacts: Path) -> str:
    """What the gate stage does on a pass: adapter + report on disk, job succeeded and released."""
    adapter = artifacts / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    (artifacts / "report.json").write_text(json.dumps({"verdict": {"released": True, "asr_delta": 0.01}}))
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        org = session.get(Organization, job.org_id)
        assert org is not None
        for status in (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED):
            transition(session, job, status, message=status.value, data={"stage": "gate"})
        job.released, job.adapter_path, job.report_path = True, str(adapter), str(artifacts)
        job.fine_tuned_model = fine_tuned_model_name(job.model, org.name, job.suffix, job.id)
        job.trained_tokens = 1234
        return job.fine_tuned_model


def test_unreleased_adapter_is_403_and_report_404(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    assert info.value.code == "adapter_not_released"
    with pytest.raises(openai.NotFoundError) as nf:
        client.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
    assert nf.value.code == "report_not_ready"


def test_released_job_serves_adapter_report_and_model(client: openai.OpenAI, tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client), suffix="sql")
    name = _release(job.id, tmp_path / "artifacts")
    got = client.fine_tuning.jobs.retrieve(job.id)
    assert got.status == "succeeded" and got.fine_tuned_model == name and got.trained_tokens == 1234
    assert name.startswith(f"ft:{MODEL}:") and name.endswith(f":sql:{job.id}")
    raw = client.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert f"{job.id}-adapter/adapter_config.json" in names
    report = client.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
    assert report == {"verdict": {"released": True, "asr_delta": 0.01}}
    models = [m.id for m in client.models.list()]
    assert {MODEL, "smollm2-135m-aligned", name} <= set(models)
    assert client.models.retrieve(name).owned_by != "tunegate"


def test_models_lists_configured_bases(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["smollm2-135m", "smollm2-135m-aligned"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")
