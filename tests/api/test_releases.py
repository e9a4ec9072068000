"""Our extensions: /v1/models, the safety report and the adapter download (only after release)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import openai
import pytest

from tests.api.conftest import processed_file, release_job
from tests.utils.reports import small_report_json

MODEL = "smollm2-135m"


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
    name = release_job(job.id, tmp_path / "artifacts")
    got = client.fine_tuning.jobs.retrieve(job.id)
    assert got.status == "succeeded" and got.fine_tuned_model == name and got.trained_tokens == 1234
    assert name.startswith(f"ft:{MODEL}:") and name.endswith(f":sql:{job.id}")
    raw = client.get(f"/fine_tuning/jobs/{job.id}/adapter", cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = sorted(tar.getnames())
    assert f"{job.id}-adapter/adapter_config.json" in names
    report = client.get(f"/fine_tuning/jobs/{job.id}/safety_report", cast_to=object)
    assert report == small_report_json()  # as the gate wrote it (paths scrubbed: this one has none)
    models = [m.id for m in client.models.list()]
    assert {MODEL, "smollm2-135m-aligned", name} <= set(models)
    assert client.models.retrieve(name).owned_by != "tunegate"


def test_models_lists_configured_bases(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["smollm2-135m", "smollm2-135m-aligned"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-5")
