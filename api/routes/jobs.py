"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, events, checkpoints; plus our safety report and
adapter download."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.orm import Session

from api import crud
from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.estimate import estimate_finish
from api.job_create import create_job
from api.schemas import CheckpointOut, EventOut, JobCreateIn, JobOut, ListOut
from api.views import checkpoint_out, event_out, job_out
from models.jobs import JobStatus, record_event, transition
from models.tables import Job
from tunegate.errors import Conflict

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
Limit = Annotated[int, Query(ge=1, le=1000)]


def _out(session: Session, job: Job) -> JobOut:
    """The job, with ``estimated_finish`` from its running stage's speed (``api/estimate.py``)."""
    if job.status != JobStatus.RUNNING:
        return job_out(job)
    points = crud.progress_points(session, job=job)
    return job_out(job, estimated_finish=estimate_finish(points, now=time.time()))


@router.post("", response_model=JobOut)
def create(
    body: JobCreateIn,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(max_length=256)] = None,
) -> JobOut:
    job = create_job(session, org=org, body=body, settings=settings, idempotency_key=idempotency_key)
    return job_out(job)


def _metadata_filter(request: Request) -> dict[str, str]:
    out = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            out[key[len("metadata[") : -1]] = value
    return out


@router.get("", response_model=ListOut[JobOut])
def list_jobs(
    request: Request, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListOut[JobOut]:
    wanted = _metadata_filter(request)
    rows, more = crud.list_jobs(session, org=org, after=after, limit=limit, metadata=wanted)
    data = [_out(session, r) for r in rows]
    return ListOut[JobOut].page(data, more)


@router.get("/{job_id}", response_model=JobOut)
def retrieve(job_id: str, org: CurrentOrg, session: SessionDep) -> JobOut:
    return _out(session, crud.get_job(session, org=org, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobOut)
def cancel(job_id: str, org: CurrentOrg, session: SessionDep) -> JobOut:
    """A job not yet running is cancelled at once; a running one is asked to stop at its next step."""
    job = crud.get_job(session, org=org, job_id=job_id, for_update=True)
    status = JobStatus(job.status)
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise Conflict(
            f"job {job.id} already {status.value}; it cannot be cancelled",
            param="fine_tuning_job_id",
            code="job_already_finished",
        )
    if status in (JobStatus.VALIDATING_FILES, JobStatus.QUEUED):
        transition(session, job, JobStatus.CANCELLED, message="Job cancelled by the user before it started")
    elif status == JobStatus.RUNNING and not job.cancel_requested:
        job.cancel_requested = True
        record_event(
            session,
            job,
            "Cancellation requested; the job stops at its next step",
            dedupe_key="cancel_requested",
        )
    session.commit()
    return _out(session, job)


@router.get("/{job_id}/events", response_model=ListOut[EventOut])
def list_events(
    job_id: str, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListOut[EventOut]:
    job = crud.get_job(session, org=org, job_id=job_id)
    rows, more = crud.list_events(session, job=job, after=after, limit=limit)
    data = [event_out(r) for r in rows]
    return ListOut[EventOut].page(data, more)


@router.get("/{job_id}/checkpoints", response_model=ListOut[CheckpointOut])
def list_checkpoints(
    job_id: str, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 10
) -> ListOut[CheckpointOut]:
    job = crud.get_job(session, org=org, job_id=job_id)
    rows, more = crud.list_checkpoints(session, job=job, after=after, limit=limit)
    data = [checkpoint_out(r, job, org.name) for r in rows]
    return ListOut[CheckpointOut].page(data, more)
