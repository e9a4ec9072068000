"""Fine-tuning jobs through the SDK: create, list, retrieve, cancel, events, checkpoints."""

from __future__ import annotations

import uuid

import openai
import pytest

from models.db import session_scope
from models.jobs import JobStatus, record_event, transition
from models.tables import Checkpoint, Job
from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import Server
from tests.utils.broker import queued_tasks
from tunegate.settings import reset_settings

MODEL = "smollm2-135m"


def _advance(job_id: str, *statuses: JobStatus, **fields: object) -> None:
    """Move a job the way a worker does: through models.jobs.transition (tests of the API's side only)."""
    with session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for status in statuses:
            transition(session, job, status, message=f"to {status.value}", data={"stage": "train"})
        for k, v in fields.items():
            setattr(job, k, v)


def test_create_retrieve_and_shape(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=fid,
        validation_file=fid,
        suffix="my-model",
        seed=7,
        hyperparameters={"n_epochs": 3, "batch_size": 4, "learning_rate_multiplier": 0.5},
        metadata={"team": "red"},
    )
    assert job.id.startswith("ftjob-") and job.object == "fine_tuning.job"
    assert (job.hyperparameters.n_epochs, job.hyperparameters.batch_size) == (3, 4)
    assert job.hyperparameters.learning_rate_multiplier == 0.5
    assert job.seed == 7 and job.metadata == {"team": "red"} and job.validation_file == fid
    assert job.method is not None and job.method.type == "supervised"
    assert job.model_extra is not None and job.model_extra["safety"]["mitigation"] == "downweight"
    got = client.fine_tuning.jobs.retrieve(job.id)
    assert got.id == job.id and got.status == "validating_files" and got.result_files == []
    raw = client.fine_tuning.jobs.with_raw_response.retrieve(job.id)
    body = raw.http_response.json()
    for key in ("error", "fine_tuned_model", "finished_at", "trained_tokens"):
        assert key in body and body[key] is None
    assert raw.headers["x-request-id"].startswith("req_")


def test_method_hyperparameters_and_seed_default(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    job = client.fine_tuning.jobs.create(
        model=MODEL,
        training_file=fid,
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
    )
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == "auto"
    assert isinstance(job.seed, int)


def test_list_pages_and_metadata_filter(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    ids = [
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid, metadata={"n": str(i % 2)}).id
        for i in range(5)
    ]
    page = client.fine_tuning.jobs.list(limit=2)
    assert len(page.data) == 2 and page.has_more
    all_ids = [j.id for j in client.fine_tuning.jobs.list(limit=2)]
    assert all_ids == sorted(ids, reverse=True)
    odd = [j.id for j in client.fine_tuning.jobs.list(metadata={"n": "1"})]
    assert odd == sorted([ids[1], ids[3]], reverse=True)


def test_cancel_before_start_is_immediate(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cancelled.finished_at is not None and cancelled.error is None
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"  # idempotent


def test_cancel_running_requests_a_stop(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    _advance(job.id, JobStatus.QUEUED, JobStatus.RUNNING)
    out = client.fine_tuning.jobs.cancel(job.id)
    assert out.status == "running" and out.model_extra is not None and out.model_extra["cancel_requested"]
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None and row.cancel_requested
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[0].startswith("Cancellation requested")


def test_cancel_finished_job_is_409_not_retried(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    _advance(job.id, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED)
    with pytest.raises(openai.ConflictError) as info:
        client.fine_tuning.jobs.cancel(job.id)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.code == "job_already_finished"


def test_failed_job_reports_coded_error(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        transition(
            session,
            row,
            JobStatus.FAILED,
            level="error",
            message="blocked",
            error={
                "code": "unsafe_training_data",
                "message": "31% of examples flagged (limit 10%)",
                "param": "training_file",
            },
        )
    got = client.fine_tuning.jobs.retrieve(job.id)
    assert got.status == "failed" and got.error is not None and got.error.code == "unsafe_training_data"
    assert got.error.param == "training_file" and "31%" in got.error.message
    assert got.fine_tuned_model is None


def test_events_newest_first_with_pagination(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        for step in range(5):
            record_event(
                session, row, f"step {step}", type="metrics", data={"step": step, "progress": step / 5}
            )
    events = list(client.fine_tuning.jobs.list_events(job.id, limit=3))
    assert [e.message for e in events[:5]] == [f"step {s}" for s in range(4, -1, -1)]
    assert events[-1].message.startswith("Created fine-tuning job")
    assert all(e.id.startswith("ftevent-") and "stage" in e.data and "progress" in e.data for e in events)  # type: ignore[operator]
    assert events[0].type == "metrics" and events[0].level == "info"


def test_checkpoints_list(client: openai.OpenAI) -> None:
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client), suffix="s")
    with session_scope() as session:
        for step in (10, 20, 30):
            metrics = {"step": step, "train_loss": 1.0 / step}
            session.add(Checkpoint(job_id=job.id, step_number=step, metrics=metrics))
    page = client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)
    assert [c.step_number for c in page.data] == [30, 20] and page.has_more
    all_steps = [c.step_number for c in client.fine_tuning.jobs.checkpoints.list(job.id, limit=2)]
    assert all_steps == [30, 20, 10]
    first = page.data[0]
    assert first.id.startswith("ftckpt_") and first.fine_tuning_job_id == job.id
    assert first.fine_tuned_model_checkpoint.endswith(":ckpt-step-30")
    assert first.metrics.train_loss == 1.0 / 30


def test_idempotency_key(client: openai.OpenAI) -> None:
    fid = processed_file(client)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    a = client.fine_tuning.jobs.create(model=MODEL, training_file=fid, extra_headers=key)
    b = client.fine_tuning.jobs.create(model=MODEL, training_file=fid, extra_headers=key)
    assert a.id == b.id
    assert len([t for t in queued_tasks() if t[1] == [a.id]]) == 1
    with pytest.raises(openai.ConflictError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid, suffix="other", extra_headers=key)
    assert info.value.response.headers["x-should-retry"] == "false"
    assert info.value.code == "idempotency_key_reused"
    assert len(list(client.fine_tuning.jobs.list())) == 1


def test_concurrent_creates_with_one_idempotency_key_make_one_job(client: openai.OpenAI) -> None:
    from concurrent.futures import ThreadPoolExecutor

    fid = processed_file(client)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = list(
            pool.map(
                lambda _: client.fine_tuning.jobs.create(model=MODEL, training_file=fid, extra_headers=key),
                range(6),
            )
        )
    assert len({j.id for j in jobs}) == 1
    assert len(list(client.fine_tuning.jobs.list())) == 1


def test_first_event_names_the_job(client: openai.OpenAI) -> None:
    """Issue 11 item 7: the first event read "Created fine-tuning job: None"."""
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    events = list(client.fine_tuning.jobs.list_events(job.id))
    assert events[-1].message == f"Created fine-tuning job: {job.id}"


@pytest.mark.parametrize("key", ['a"b', '"', "a'b", "a.b", "a\\b", "$[0]", "a]b", "ключ"])
def test_metadata_filter_keys_with_quotes_and_path_characters(client: openai.OpenAI, key: str) -> None:
    """Issue 11 item 7: a metadata key holding a double quote silently matched nothing."""
    fid = processed_file(client)
    hit = client.fine_tuning.jobs.create(model=MODEL, training_file=fid, metadata={key: "v", "k": "1"})
    client.fine_tuning.jobs.create(model=MODEL, training_file=fid, metadata={key: "w", "k": "1"})
    client.fine_tuning.jobs.create(model=MODEL, training_file=fid, metadata={"other": "v"})
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={key: "v"})] == [hit.id]
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={key: "v", "k": "1"})] == [hit.id]
    assert list(client.fine_tuning.jobs.list(metadata={key: "v", "k": "2"})) == []


def test_past_the_active_job_limit_create_answers_429_naming_the_count(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 29 section 7: one organization could queue any number of jobs."""
    monkeypatch.setenv("TUNEGATE_MAX_ACTIVE_JOBS_PER_ORG", "3")
    reset_settings()
    client = sdk(server, new_key())
    fid = processed_file(client)
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = client.fine_tuning.jobs.create(model=MODEL, training_file=fid, extra_headers=key)
    ids = [first.id] + [client.fine_tuning.jobs.create(model=MODEL, training_file=fid).id for _ in range(2)]
    with pytest.raises(openai.RateLimitError) as info:
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    assert info.value.code == "too_many_active_jobs"
    assert "has 3 active fine-tuning jobs" in info.value.message and "at most 3" in info.value.message
    assert info.value.response.headers["x-should-retry"] == "false"  # a job must end first
    assert sorted(j.id for j in client.fine_tuning.jobs.list()) == sorted(ids)  # nothing stored
    # a retried create (same Idempotency-Key) is the job it made, not a refusal
    assert client.fine_tuning.jobs.create(model=MODEL, training_file=fid, extra_headers=key).id == first.id
    _advance(ids[1], JobStatus.QUEUED)
    client.fine_tuning.jobs.pause(ids[1])  # a paused job still counts
    with pytest.raises(openai.RateLimitError):
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    client.fine_tuning.jobs.cancel(ids[0])  # an ended job frees its place
    assert client.fine_tuning.jobs.create(model=MODEL, training_file=fid).status == "validating_files"


def test_an_organizations_policy_overrides_the_active_job_limit(server: Server) -> None:
    strict = sdk(server, new_key(policy={"max_active_jobs": 1}))
    fid = processed_file(strict)
    strict.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    with pytest.raises(openai.RateLimitError) as info:
        strict.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    assert info.value.code == "too_many_active_jobs" and "at most 1 at once" in info.value.message
    roomy = sdk(server, new_key(policy={"max_active_jobs": 8}))  # above the provider default of 6
    fid = processed_file(roomy)
    for _ in range(8):
        roomy.fine_tuning.jobs.create(model=MODEL, training_file=fid)
    with pytest.raises(openai.RateLimitError):
        roomy.fine_tuning.jobs.create(model=MODEL, training_file=fid)


def test_concurrent_creates_never_pass_the_active_job_limit(server: Server) -> None:
    """Counted in the transaction that holds the organization's row: racing creates cannot all pass."""
    from concurrent.futures import ThreadPoolExecutor

    client = sdk(server, new_key(policy={"max_active_jobs": 3}))
    fid = processed_file(client)

    def create(_: int) -> str:
        try:
            return client.fine_tuning.jobs.create(model=MODEL, training_file=fid).id
        except openai.RateLimitError as exc:
            return str(exc.code)

    with ThreadPoolExecutor(max_workers=6) as pool:  # below the per-org limit of requests in flight
        results = list(pool.map(create, range(6)))
    assert sorted(results)[-3:] == ["too_many_active_jobs"] * 3 and len(set(results)) == 4, results
    assert len(list(client.fine_tuning.jobs.list())) == 3


@pytest.mark.parametrize("claimed", [False, True], ids=["running", "queued-claimed"])
def test_resume_withdraws_a_pending_pause_request(client: openai.OpenAI, claimed: bool) -> None:
    """Issue 29 §6: ``jobs.resume`` on a job asked to pause that has not paused yet answered 409; it withdraws
    the request, and the job goes on (no second message for the workers, its claim kept)."""
    job = client.fine_tuning.jobs.create(model=MODEL, training_file=processed_file(client))
    if claimed:  # a worker holds it but has not started the stage: pause becomes a request too
        _advance(job.id, JobStatus.QUEUED, claimed_by="worker@host", claim_token="t")
    else:
        _advance(job.id, JobStatus.QUEUED, JobStatus.RUNNING, claimed_by="worker@host", claim_token="t")
    status = "queued" if claimed else "running"
    asked = client.fine_tuning.jobs.pause(job.id)
    assert asked.model_extra is not None and asked.model_extra["pause_requested"]
    queued_tasks()  # drain what create sent
    resumed = client.fine_tuning.jobs.resume(job.id)
    assert resumed.status == status and resumed.model_extra is not None
    assert not resumed.model_extra["pause_requested"] and not resumed.model_extra["paused"]
    with session_scope() as session:
        row = session.get(Job, job.id)
        assert row is not None
        assert (row.status, row.pause_requested, row.claimed_by) == (status, False, "worker@host")
    assert queued_tasks() == []  # the worker that holds it goes on: nothing is sent again
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id)]
    assert messages[0] == "Pause request withdrawn by the user; the job goes on"
    with pytest.raises(openai.ConflictError) as again:  # nothing left to withdraw, and not paused
        client.fine_tuning.jobs.resume(job.id)
    assert again.value.code == "invalid_status_transition"
