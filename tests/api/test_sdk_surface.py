"""The rest of the SDK's surface through ``openai.OpenAI(_strict_response_validation=True)``: file expiry
(``files.create(expires_after=...)``, deleted by the reaper), ``estimated_finish`` and
``user_provided_suffix`` on jobs, ``models.delete`` of a fine-tune, checkpoint downloads of a released job,
``jobs.pause``/``jobs.resume`` (and cancel while paused), the results file through ``files.content``, and
the clear 400s for what the gateway does not offer (other method types, integrations)."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import func, select, update

from models.base import utcnow
from models.db import session_scope
from models.jobs import JobStatus, record_event, transition
from models.tables import Checkpoint, File, Job, JobEvent
from tests.api.conftest import new_key, processed_file, release_job, sdk
from tests.api.server import Server
from tests.utils.broker import queued_tasks
from worker.reaper import reap_expired

MODEL = "smollm2-135m"
DAY = 24 * 3600


# --- files.create(expires_after=...) ----------------------------------------------------------------


def _stored(server: Server, content: bytes) -> list[Path]:
    return [p for p in (server.home / "files").rglob("*") if p.is_file() and p.read_bytes() == content]


def test_expires_after_is_returned_and_the_reaper_deletes_the_file(
    client: openai.OpenAI, server: Server
) -> None:
    content = b"expiring " + server.backend.encode()
    f = client.files.create(
        file=("e.txt", content), purpose="user_data", expires_after={"anchor": "created_at", "seconds": DAY}
    )
    assert f.expires_at is not None and f.expires_at - f.created_at == DAY
    assert client.files.retrieve(f.id).expires_at == f.expires_at
    keep = client.files.create(file=("k.txt", b"kept " + content), purpose="user_data")
    assert keep.expires_at is None
    assert reap_expired()[0] == []  # not yet expired
    with session_scope() as s:
        s.execute(update(File).where(File.id == f.id).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(openai.NotFoundError):  # hidden at once, before the reaper runs
        client.files.retrieve(f.id)
    assert [x.id for x in client.files.list()] == [keep.id]
    assert len(_stored(server, content)) == 1
    files, _ = reap_expired()
    assert f.id in files and keep.id not in files
    assert _stored(server, content) == []
    with session_scope() as s:
        row = s.get(File, f.id)
        assert row is not None and row.deleted_at is not None
    assert client.files.content(keep.id).read() == b"kept " + content


@pytest.mark.parametrize(
    ("policy", "param"),
    [
        ({"anchor": "created_at", "seconds": 60}, "expires_after.seconds"),
        ({"anchor": "created_at", "seconds": 31 * DAY}, "expires_after.seconds"),
        ({"anchor": "last_active_at", "seconds": DAY}, "expires_after.anchor"),
    ],
)
def test_a_bad_expiry_policy_is_400_naming_its_part(
    policy: dict[str, Any], param: str, client: openai.OpenAI
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("e.txt", b"x"), purpose="user_data", expires_after=policy)  # type: ignore[arg-type]
    assert info.value.param == param and info.value.code == "invalid_expires_after"
    with pytest.raises(openai.BadRequestError) as up:
        client.uploads.create(
            bytes=1,
            filename="e.txt",
            mime_type="text/plain",
            purpose="user_data",
            expires_after=policy,  # type: ignore[arg-type]
        )
    assert up.value.param == param
    assert list(client.files.list()) == []


# --- what the gateway does not offer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1}}}},
            "method.type",
            "unsupported_method",
        ),
        ({"method": {"type": "reinforcement"}}, "method.type", "unsupported_method"),
        (
            {"integrations": [{"type": "wandb", "wandb": {"project": "p"}}]},
            "integrations",
            "unsupported_integrations",
        ),
    ],
)
def test_unsupported_features_are_a_clear_400(
    extra: dict[str, Any], param: str, code: str, client: openai.OpenAI
) -> None:
    fid = processed_file(client)
    with pytest.raises(openai.BadRequestError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid, **extra)
    assert info.value.param == param and info.value.code == code
    body = info.value.body
    assert isinstance(body, dict) and body["message"].count(".") <= 1 and param in body["message"]
    assert list(client.fine_tuning.jobs.list()) == []


# --- jobs: user_provided_suffix, estimated_finish -----------------------------------------------


def test_user_provided_suffix(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    named = client.fine_tuning.jobs.create(model=MODEL, training_file=fid, suffix="support")
    plain = client.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    assert client.fine_tuning.jobs.retrieve(named.id).model_extra["user_provided_suffix"] == "support"  # type: ignore[index]
    assert plain.model_extra["user_provided_suffix"] is None  # type: ignore[index]


def _start_train_stage(job_id: str, ago: float) -> None:
    """A worker starting the train stage (overall progress 0.22) ``ago`` seconds ago."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        transition(s, job, JobStatus.QUEUED, message="queued", data={"stage": "train", "progress": 0.22})
        transition(s, job, JobStatus.RUNNING, message="running", data={"stage": "train"})
        s.execute(
            update(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > 2)  # the two status events
            .values(created_at=utcnow() - timedelta(seconds=ago))
        )


def _record_progress(job_id: str, ago: float, progress: float) -> None:
    """A throttled progress event of the running stage, written ``ago`` seconds ago."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.progress = progress
        record_event(s, job, f"train: {progress}", data={"stage": "train", "progress": progress})
        last = select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id).scalar_subquery()
        s.execute(
            update(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq == last)
            .values(created_at=utcnow() - timedelta(seconds=ago))
        )


def test_estimated_finish_follows_the_running_stage(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    assert job.estimated_finish is None
    _start_train_stage(job.id, ago=1000)
    assert client.fine_tuning.jobs.retrieve(job.id).estimated_finish is None  # no progress measured yet
    _record_progress(job.id, ago=100, progress=0.3)
    _record_progress(job.id, ago=50, progress=0.5)
    now = utcnow().timestamp()
    got = client.fine_tuning.jobs.retrieve(job.id).estimated_finish
    t0, p0, t1, p1 = now - 1000, 0.22, now - 50, 0.5  # the stage's first and last points
    expected = t1 + (1 - p1) * (t1 - t0) / (p1 - p0)
    assert got is not None and abs(got - expected) <= 2
    assert [j.estimated_finish for j in client.fine_tuning.jobs.list()] == [got]
    with session_scope() as s:
        row = s.get(Job, job.id)
        assert row is not None
        transition(s, row, JobStatus.SUCCEEDED, message="done")
    assert client.fine_tuning.jobs.retrieve(job.id).estimated_finish is None


# --- models.delete -------------------------------------------------------------------------------


def _released(client: openai.OpenAI, tmp_path: Path) -> tuple[str, str]:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client), suffix="del")
    return job.id, release_job(job.id, tmp_path / "artifacts")


def test_models_delete_of_a_fine_tune(client: openai.OpenAI, server: Server, tmp_path: Path) -> None:
    job_id, name = _released(client, tmp_path)
    with pytest.raises(openai.NotFoundError) as other:  # another organization's model
        sdk(server, new_key()).models.delete(name)
    assert other.value.code == "model_not_found"
    with pytest.raises(openai.PermissionDeniedError) as base:
        client.models.delete(MODEL)
    assert base.value.code == "model_not_deletable" and base.value.param == "model"
    deleted = client.models.delete(name)
    assert (deleted.id, deleted.deleted, deleted.object) == (name, True, "model")
    assert name not in [m.id for m in client.models.list()]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(name)
    with pytest.raises(openai.NotFoundError) as adapter:
        client.get(f"/fine_tuning/jobs/{job_id}/adapter", cast_to=bytes)
    assert adapter.value.code == "model_deleted"
    with pytest.raises(openai.NotFoundError) as again:
        client.models.delete(name)
    assert again.value.code == "model_not_found"
    assert client.fine_tuning.jobs.retrieve(job_id).status == "succeeded"  # the job's history stays


# --- checkpoint downloads ------------------------------------------------------------------------


def _checkpoint(job_id: str, root: Path, step: int) -> None:
    """What the train stage leaves per epoch: ``epoch-N/adapter`` (peft) and the trainer state."""
    path = root / f"epoch-{step}"
    (path / "adapter").mkdir(parents=True)
    config = {"r": 8, "base_model_name_or_path": "/srv/secret/models/base"}
    (path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (path / "adapter" / "adapter_model.safetensors").write_bytes(b"\x01" * 32)
    (path / "trainer_state.pt").write_bytes(b"optimizer state")
    with session_scope() as s:
        s.add(Checkpoint(job_id=job_id, step_number=step, metrics={"train_loss": 1.0 / step}, path=str(path)))


def test_checkpoints_of_a_released_job_download(client: openai.OpenAI, tmp_path: Path) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    for step in (1, 2):
        _checkpoint(job.id, tmp_path / "checkpoints", step)
    ckpts = list(client.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in ckpts] == [2, 1]
    first = ckpts[1]
    path = f"/fine_tuning/jobs/{job.id}/checkpoints/{first.id}/adapter"
    with pytest.raises(openai.PermissionDeniedError) as early:
        client.get(path, cast_to=bytes)
    assert early.value.code == "adapter_not_released"
    name = release_job(job.id, tmp_path / "artifacts")
    raw = client.get(path, cast_to=bytes)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        config = json.loads(tar.extractfile(f"{job.id}-step-1-adapter/adapter_config.json").read())  # type: ignore[union-attr]
    assert names == [
        f"{job.id}-step-1-adapter/adapter_config.json",
        f"{job.id}-step-1-adapter/adapter_model.safetensors",
    ]
    assert config["base_model_name_or_path"] == MODEL and b"/srv/secret" not in raw
    with pytest.raises(openai.NotFoundError):
        client.get(f"/fine_tuning/jobs/{job.id}/checkpoints/ftckpt_nope/adapter", cast_to=bytes)
    client.models.delete(name)
    with pytest.raises(openai.NotFoundError) as gone:
        client.get(path, cast_to=bytes)
    assert gone.value.code == "model_deleted"


# --- jobs.pause / jobs.resume -------------------------------------------------------------------------


def _move(job_id: str, *statuses: JobStatus, stage: str = "train") -> None:
    """Move a job the way a worker does (through transition): the API's side only, no model."""
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        for status in statuses:
            transition(s, job, status, message=f"to {status.value}", data={"stage": stage})


def _row(job_id: str) -> Job:
    with session_scope() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def test_a_queued_job_pauses_at_once_and_resumes_where_it_paused(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    _move(job.id, JobStatus.QUEUED)
    queued_tasks()  # drain the start message
    paused = client.fine_tuning.jobs.pause(job.id)
    # the SDK's status literal has no "paused": status reads "queued" (Settings.paused_status), paused=true
    assert paused.status == "queued" and paused.model_extra is not None and paused.model_extra["paused"]
    assert _row(job.id).status == "paused"
    assert client.fine_tuning.jobs.retrieve(job.id).model_extra == paused.model_extra
    with pytest.raises(openai.ConflictError) as again:
        client.fine_tuning.jobs.pause(job.id)
    assert again.value.code == "invalid_status_transition"
    assert queued_tasks() == []  # nothing runs while paused
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert (
        resumed.status == "queued" and resumed.model_extra is not None and not resumed.model_extra["paused"]
    )
    row = _row(job.id)
    assert (row.status, row.stage, row.claimed_by) == ("queued", "train", None)
    assert queued_tasks() == [("tunegate.job.resume", [job.id])]
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[:2] == ["Job resumed by the user at train", "Job paused by the user"]


def test_a_running_job_is_asked_to_pause_at_its_next_checkpoint(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    _move(job.id, JobStatus.QUEUED, JobStatus.RUNNING)
    out = client.fine_tuning.jobs.pause(job.id)
    assert out.status == "running" and out.model_extra is not None
    assert out.model_extra["pause_requested"] and not out.model_extra["paused"]
    assert _row(job.id).pause_requested
    assert client.fine_tuning.jobs.pause(job.id).status == "running"  # asked twice: one event
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages.count("Pause requested; the job pauses at its next checkpoint") == 1
    withdrawn = client.fine_tuning.jobs.resume(job.id)  # not paused yet: the request is withdrawn
    assert withdrawn.status == "running" and withdrawn.model_extra is not None
    assert not withdrawn.model_extra["pause_requested"] and not _row(job.id).pause_requested


def test_a_paused_job_can_be_cancelled_and_a_finished_one_not_paused(
    client: openai.OpenAI, server: Server
) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    _move(job.id, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.pause(job.id)
    with pytest.raises(openai.ConflictError):
        client.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.NotFoundError):  # another organization's job is a missing one
        sdk(server, new_key()).fine_tuning.jobs.pause(job.id)


# --- result_files ---------------------------------------------------------------------------------


def test_the_results_file_downloads_through_files_content(
    client: openai.OpenAI, server: Server, tmp_path: Path
) -> None:
    from worker.stages import train

    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    history = [
        {"step": 1, "train_loss": 2.5, "train_mean_token_accuracy": 0.25},
        {"step": 2, "train_loss": 2.0, "train_mean_token_accuracy": 0.5, "valid_loss": 2.25},
    ]
    history[1]["valid_mean_token_accuracy"] = 0.375
    path = tmp_path / "results.csv"
    path.write_text(train.results_csv(history))
    res = train.TrainResult("adapter", 100, 2, 1, 0, 12, "fp", results_file=str(path))
    for _ in range(2):  # a re-applied stage stores it once
        with session_scope() as s:
            row = s.get(Job, job.id)
            assert row is not None
            train.apply(s, row, res)
    (fid,) = client.fine_tuning.jobs.retrieve(job.id).result_files
    assert client.files.content(fid).read() == path.read_bytes()
    assert path.read_text().splitlines() == [
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy",
        "1,2.500000,0.250000,,",
        "2,2.000000,0.500000,2.250000,0.375000",
    ]
    f = client.files.retrieve(fid)
    assert (f.purpose, f.status, f.bytes) == ("fine-tune-results", "processed", path.stat().st_size)
    assert [x.id for x in client.files.list(purpose="fine-tune-results")] == [fid]
    with pytest.raises(openai.NotFoundError):
        sdk(server, new_key()).files.content(fid)
