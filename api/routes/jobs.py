"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints; plus our safety
report and adapter download.

The poll path (retrieve, list, events: what every SDK poller calls in a loop) is ``async``: the caller's
organization comes from the auth cache, the route's one statement runs through ``read_db`` (on the event
loop with SQLite, in one worker-thread hop with PostgreSQL), and the response is serialized once
(``json_response``). A running job costs one more read: its ``estimated_finish`` comes from the running
stage's recent progress events (``api/services/estimate.py``). A job that has waited past a grace on a queue
that no live worker serves says so in ``waiting`` (``models/presence.py``; the served queues are cached)."""

from __future__ import annotations

import time
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import Response

from api.core.responses import json_response
from api.deps import CurrentOrg, SessionDep, SettingsDep, read_db
from api.schemas import CheckpointOut, EventOut, JobCreateIn, JobOut, ListOut
from api.services import crud
from api.services.estimate import estimate_finish
from api.services.job_create import create_job, dispatch_jobs
from api.services.views import checkpoint_out, event_out, job_out
from models import jobs, presence
from models.jobs import JobStatus, record_event, transition
from tunegate.errors import Conflict, InvalidRequest
from tunegate.settings import get_settings

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning"])
MAX_PAGE = 1000  # the largest ``limit`` of a list (the fast lane, api/fastpath.py, checks the same bound)
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


async def _out(row: crud.JobRow) -> JobOut:
    """The job; a running one with ``estimated_finish`` from its running stage's measured speed; one that
    has waited past the grace on a queue no live worker serves with ``waiting`` saying so."""
    waiting = await _waiting(row)
    if row.status != JobStatus.RUNNING:
        return job_out(row, waiting=waiting)
    points = await read_db(partial(crud.progress_points, job_id=row.id, stage=row.stage))
    return job_out(row, estimated_finish=estimate_finish(points, now=time.time()), waiting=waiting)


async def _waiting(row: crud.JobRow) -> str | None:
    """``models.presence``: the served queues come from this process's cache, or one read of a small table
    (at most every few seconds, and only for a job that has waited past the grace)."""
    settings = get_settings()
    if not presence.candidate(row, settings):
        return None
    served = presence.cached_served()
    if served is None:
        served = await read_db(partial(presence.served_queues, settings=settings))
    return presence.unserved_message(row, served)


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


# ``metadata[key]=value`` filters of one list request: a job's metadata holds at most 16 pairs (OpenAI's
# limit, ``JobCreateIn``), so more filters can match nothing; each is one more condition in the query
# (issue 29: 1,100 of them made SQLite refuse the statement, a 503).
MAX_METADATA_FILTERS = 16


def _metadata_filter(request: Request) -> dict[str, str]:
    out = {}
    for key, value in request.query_params.multi_items():
        if key.startswith("metadata[") and key.endswith("]"):
            out[key[len("metadata[") : -1]] = value
            if len(out) > MAX_METADATA_FILTERS:
                raise InvalidRequest(
                    f"at most {MAX_METADATA_FILTERS} metadata filters (metadata[key]=value) may be given "
                    "at once, as a job's metadata holds at most 16 pairs",
                    param="metadata",
                    code="too_many_metadata_filters",
                )
    return out


@router.get("", response_model=ListOut[JobOut])
async def list_jobs(
    request: Request, org: CurrentOrg, after: str | None = None, limit: Limit = 20
) -> Response:
    wanted = _metadata_filter(request)
    read = partial(crud.job_page, org_id=org.id, after=after, limit=limit, metadata=wanted)
    rows, more = await read_db(read)
    return json_response(ListOut[JobOut].page([await _out(r) for r in rows], more))


@router.get("/{job_id}", response_model=JobOut)
async def retrieve(job_id: str, org: CurrentOrg) -> Response:
    row = await read_db(partial(crud.job_row, org_id=org.id, job_id=job_id))
    return json_response(await _out(row))


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
    elif status == JobStatus.PAUSED:
        transition(session, job, JobStatus.CANCELLED, message="Job cancelled by the user while paused")
    elif status == JobStatus.RUNNING and not job.cancel_requested:
        job.cancel_requested = True
        record_event(
            session,
            job,
            "Cancellation requested; the job stops at its next step",
            dedupe_key="cancel_requested",
        )
    session.commit()
    if status in (JobStatus.VALIDATING_FILES, JobStatus.QUEUED):
        dispatch_jobs()  # an admitted job's turn came free
    return job_out(job)


@router.post("/{job_id}/pause", response_model=JobOut)
def pause(job_id: str, org: CurrentOrg, session: SessionDep) -> JobOut:
    """A queued job pauses at once; a running one at its next checkpoint (``pause_requested`` until then)."""
    job = crud.get_job(session, org=org, job_id=job_id, for_update=True)
    jobs.pause(session, job)
    session.commit()
    if job.status == JobStatus.PAUSED:
        dispatch_jobs()  # paused at once: its turn came free
    return job_out(job)


@router.post("/{job_id}/resume", response_model=JobOut)
def resume(job_id: str, org: CurrentOrg, session: SessionDep) -> JobOut:
    """A paused job goes back to ``queued``; in its organization's turn a worker continues it from the stage
    (and, in training, the checkpoint) it paused at. Should the message be lost, the reaper resends it."""
    job = crud.get_job(session, org=org, job_id=job_id, for_update=True)
    jobs.resume(session, job)
    session.commit()
    dispatch_jobs()  # it waits for its organization's turn (models/dispatch.py)
    return job_out(job)


@router.get("/{job_id}/events", response_model=ListOut[EventOut])
async def list_events(job_id: str, org: CurrentOrg, after: str | None = None, limit: Limit = 20) -> Response:
    read = partial(crud.event_page, org_id=org.id, job_id=job_id, after=after, limit=limit)
    rows, more = await read_db(read)
    return json_response(ListOut[EventOut].page([event_out(r) for r in rows], more))


@router.get("/{job_id}/checkpoints", response_model=ListOut[CheckpointOut])
def list_checkpoints(
    job_id: str, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 10
) -> ListOut[CheckpointOut]:
    job = crud.get_job(session, org=org, job_id=job_id)
    rows, more = crud.list_checkpoints(session, job=job, after=after, limit=limit)
    data = [checkpoint_out(r, job, org.name) for r in rows]
    return ListOut[CheckpointOut].page(data, more)
