"""api/fastpath.py: the poll path's fast lane answers exactly as FastAPI's routes do.

Every request is sent twice, to the application with the fast lane and to one without it (``fast_path=False``:
FastAPI serves everything), both in this process on the ``server`` fixture's database (SQLite, and PostgreSQL
where the API tests run on it): status, body bytes and headers must be equal (the request id aside, which is
new per request). A spy on the lane's inner application tells which requests the lane served itself and
which fell through to FastAPI.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import openai
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from httpx2 import Response  # what starlette.testclient answers with (its httpx)
from starlette.types import ASGIApp, Receive, Scope, Send

from api.fastpath import FastPath
from api.main import create_app
from api.routes import jobs as jobs_routes
from models.db import session_scope
from models.jobs import JobStatus, record_event, transition
from models.keys import revoke_key
from models.tables import Job
from tests.api.conftest import new_key, processed_file, sdk
from tests.api.server import Server
from tunegate.jsontypes import JsonObject
from tunegate.settings import reset_settings

MODEL = "smollm2-135m"
JOBS = "/v1/fine_tuning/jobs"


@dataclass
class Spy:
    """Wraps the fast lane's inner application (FastAPI's): the paths that fell through to it."""

    app: ASGIApp
    fell_through: list[str] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.fell_through.append(scope["path"])
        await self.app(scope, receive, send)


def _spied(app: FastAPI) -> Spy:
    app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, FastPath):
        layer = layer.app
    spy = layer.app = Spy(layer.app)
    return spy


@dataclass
class Scopes:
    """An application, and the scope of each request it answered (as its outermost middleware saw it)."""

    app: ASGIApp
    seen: list[Scope] = field(default_factory=list)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)
        self.seen.append(scope)


@dataclass
class Pair:
    fast: TestClient
    slow: TestClient
    spy: Spy
    scopes: tuple[Scopes, Scopes]  # fast, slow

    def both(self, path: str, key: str | None, method: str = "GET") -> Response:
        """``path`` through both applications; asserts equal answers and returns the fast lane's."""
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        fast = self.fast.request(method, path, headers=headers)
        slow = self.slow.request(method, path, headers=headers)
        assert (fast.status_code, fast.content) == (slow.status_code, slow.content), path
        assert _headers(fast) == _headers(slow), path
        assert fast.headers["x-request-id"].startswith("req_")
        return fast

    def served(self, path: str, key: str | None) -> Response:
        """``both``, and the fast lane answered it itself."""
        before = len(self.spy.fell_through)
        answer = self.both(path, key)
        assert self.spy.fell_through[before:] == [], f"{path} fell through to FastAPI"
        return answer

    def fell(self, path: str, key: str | None, method: str = "GET") -> Response:
        """``both``, and FastAPI answered it (the lane passed it on)."""
        before = len(self.spy.fell_through)
        answer = self.both(path, key, method)
        assert self.spy.fell_through[before:] == [path.partition("?")[0]], f"{path} did not fall through"
        return answer


def _headers(r: Response) -> list[tuple[str, str]]:
    return [(k, v) for k, v in r.headers.multi_items() if k != "x-request-id"]


@pytest.fixture
def pair(server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    del server  # its environment and database
    # a running job's estimated_finish reads the clock: one instant for both applications' answers
    now = time.time()
    monkeypatch.setattr(jobs_routes, "time", SimpleNamespace(time=lambda: now))
    fast_app = create_app()
    spy = _spied(fast_app)
    # no lifespan: the real server's already runs the upkeep on this database
    scopes = Scopes(fast_app), Scopes(create_app(fast_path=False))
    fast, slow = (TestClient(app, follow_redirects=False) for app in scopes)
    yield Pair(fast, slow, spy, scopes)


@dataclass
class Org:
    key: str
    jobs: list[str]  # queued, running (with progress), failed, paused: newest last
    events: list[str]  # of the running job, newest first


def _org(server: Server) -> Org:
    """An organization with a job in each state that renders differently, and events to page through."""
    key = new_key()
    client = sdk(server, key)
    fid = processed_file(client)
    ids = [
        client.fine_tuning.jobs.create(model=MODEL, training_file=fid, metadata={"n": str(i)}).id
        for i in range(4)
    ]
    with session_scope() as session:
        running, failed, paused = (session.get(Job, i) for i in ids[1:])
        assert running is not None and failed is not None and paused is not None
        for job in (running, paused):
            transition(session, job, JobStatus.QUEUED, message="queued")
        transition(session, running, JobStatus.RUNNING, message="started", data={"stage": "train"})
        for step in range(4):
            data: JsonObject = {"stage": "train", "progress": 0.1 * (step + 1), "step": step}
            record_event(session, running, f"step {step} in {server.home}", type="metrics", data=data)
        transition(
            session,
            failed,
            JobStatus.FAILED,
            message="failed",
            error={"code": "unsafe_training_data", "message": f"see {server.home}/x", "param": None},
        )
        transition(session, paused, JobStatus.PAUSED, message="paused")
    events = [e.id for e in client.fine_tuning.jobs.list_events(ids[1], limit=100).data]
    return Org(key, ids, events)


def test_the_poll_routes_answer_the_same_through_the_fast_lane(server: Server, pair: Pair) -> None:
    org = _org(server)
    running = org.jobs[1]
    for job_id in org.jobs:
        assert pair.served(f"{JOBS}/{job_id}", org.key).json()["id"] == job_id
        pair.served(f"{JOBS}/{job_id}/events", org.key)
    listed = pair.served(JOBS, org.key).json()
    assert [j["id"] for j in listed["data"]] == org.jobs[::-1] and listed["has_more"] is False
    assert pair.served(f"{JOBS}/{running}", org.key).json()["estimated_finish"] is not None
    pages = [
        f"{JOBS}/{running}/events?limit=2",
        f"{JOBS}/{running}/events?after={org.events[1]}",
        f"{JOBS}/{running}/events?after={org.events[1]}&limit=1",
        f"{JOBS}/{running}/events?limit=1000",
        f"{JOBS}?limit=2",
        f"{JOBS}?after={org.jobs[2]}&limit=1",
        f"{JOBS}?metadata[n]=1",
        f"{JOBS}?metadata[n]=1&metadata[other]=x&limit=5",
        f"{JOBS}?after=",
    ]
    for path in pages:
        assert pair.served(path, org.key).status_code == 200
    assert pair.served(f"{JOBS}?metadata[n]=3", org.key).json()["data"][0]["id"] == org.jobs[3]


def test_errors_answer_the_same_through_the_fast_lane(server: Server, pair: Pair) -> None:
    org, other = _org(server), _org(server)
    foreign = other.jobs[0]
    not_found = [
        f"{JOBS}/{foreign}",  # another tenant's job is missing, not forbidden
        f"{JOBS}/{foreign}/events",
        f"{JOBS}/ftjob-nope",
        f"{JOBS}/ftjob-nope/events",
        f"{JOBS}/{org.jobs[1]}/events?after={other.events[0] if other.events else 'x'}",
        f"{JOBS}/{org.jobs[0]}/events?after=ftevent-nope",
    ]
    for path in not_found:
        error = pair.served(path, org.key)
        assert error.status_code == 404 and set(error.json()["error"]) == {"message", "type", "param", "code"}
    assert list(sdk(server, other.key).fine_tuning.jobs.list()) != []
    assert [j["id"] for j in pair.served(JOBS, other.key).json()["data"]] == other.jobs[::-1]
    for key, code in [
        ("tg-not-a-real-key", "invalid_api_key"),
        (None, "missing_api_key"),
    ]:
        assert pair.served(f"{JOBS}/{org.jobs[0]}", key).json()["error"]["code"] == code
    assert pair.served(JOBS, "").status_code == 401  # "Bearer " with no key: malformed
    many = "&".join(f"metadata[k{i}]=v" for i in range(17))
    too_many = pair.served(f"{JOBS}?{many}", org.key)
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_metadata_filters"


def test_unusual_requests_fall_through_to_fastapi(server: Server, pair: Pair) -> None:
    org = _org(server)
    job = org.jobs[0]
    for path in [
        f"{JOBS}/{job}/events?limit=0",  # FastAPI's 422 names the parameter
        f"{JOBS}/{job}/events?limit=1001",
        f"{JOBS}/{job}/events?limit=abc",
        f"{JOBS}/{job}/events?limit=05",
        f"{JOBS}/{job}/events?limit=2&limit=3",
        f"{JOBS}/{job}/events?metadata[n]=1",
        f"{JOBS}/{job}/events?order=asc",
        f"{JOBS}?limit=-1",
        f"{JOBS}?metadata[n]=1&metadata[n]=2",
        f"{JOBS}/{job}?expand=x",
        f"{JOBS}/",
        f"{JOBS}//events",
        f"{JOBS}/{job}/events/",
        f"{JOBS}/{job}/checkpoints",
        f"{JOBS}x",
    ]:
        pair.fell(path, org.key)
    assert pair.fell(f"{JOBS}/{job}/events?limit=0", org.key).status_code == 422
    for method in ("HEAD", "POST", "DELETE"):
        pair.fell(f"{JOBS}/{job}", org.key, method)


def test_the_fast_lane_counts_against_the_rate_limit(pair: Pair) -> None:
    key = new_key(rate_limit_per_minute=2)
    auth = {"authorization": f"Bearer {key}"}
    assert (
        pair.fast.get(JOBS, headers=auth).status_code == pair.slow.get(JOBS, headers=auth).status_code == 200
    )
    limited = pair.served(f"{JOBS}/ftjob-nope", key)  # the limit is checked before the job is looked up
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["error"]["type"] == "rate_limit_error"
    assert pair.served(JOBS, new_key()).status_code == 200  # other organizations are not affected


def test_the_fast_lane_refuses_a_revoked_key_and_throttles_failed_logins(
    server: Server, pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    from api.core.ratelimit import AUTH_FAILURES

    monkeypatch.setenv("TUNEGATE_AUTH_CACHE_TTL_S", "0")  # refused at once (test_auth.py: the TTL)
    monkeypatch.setenv("TUNEGATE_AUTH_FAILURES_PER_MINUTE", "3")
    reset_settings()
    AUTH_FAILURES.reset()  # this client address's failures of earlier tests
    org = _org(server)
    with session_scope() as session:
        revoke_key(session, org.key)
    revoked = pair.served(f"{JOBS}/{org.jobs[0]}", org.key)  # two failures: one per application
    assert revoked.status_code == 401 and revoked.json()["error"]["code"] == "api_key_revoked"
    assert pair.fast.get(JOBS, headers={"authorization": "Bearer tg-nope"}).status_code == 401
    # the abuse guard (outside the lane) counted the failures of this client address: it refuses now
    before = len(pair.spy.fell_through)
    throttled = pair.fast.get(f"{JOBS}/{org.jobs[0]}", headers={"authorization": f"Bearer {new_key()}"})
    assert throttled.status_code == 429 and pair.spy.fell_through[before:] == []
    assert throttled.json()["error"]["code"] == "auth_failures_rate_limited"


def test_the_fast_lane_keeps_the_route_label_and_the_sdk_works(server: Server, pair: Pair) -> None:
    from api.core.metrics import route_template

    org = _org(server)
    for path in (f"{JOBS}/{org.jobs[0]}", f"{JOBS}/{org.jobs[0]}/events", JOBS, f"{JOBS}/ftjob-nope"):
        pair.served(path, org.key)
    fast, slow = ([route_template(s) for s in app.seen] for app in pair.scopes)
    assert fast == slow == [f"{JOBS}/{{job_id}}", f"{JOBS}/{{job_id}}/events", JOBS, f"{JOBS}/{{job_id}}"]
    # the real server (with the lane): the openai SDK reads every answer strictly
    client = sdk(server, org.key)
    assert client.fine_tuning.jobs.retrieve(org.jobs[1]).status == "running"
    assert [e.id for e in client.fine_tuning.jobs.list_events(org.jobs[1], limit=2)] == org.events
    assert [j.id for j in client.fine_tuning.jobs.list(limit=3)] == org.jobs[::-1]
    with pytest.raises(openai.NotFoundError):
        sdk(server, new_key()).fine_tuning.jobs.retrieve(org.jobs[0])
    schema = pair.fast.get("/openapi.json", headers={"authorization": f"Bearer {org.key}"}).json()
    assert {
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}",
        "/v1/fine_tuning/jobs/{job_id}/events",
    } <= set(schema["paths"])
