"""The poll path's fast lane: ``GET /v1/fine_tuning/jobs/{id}``, ``GET /v1/fine_tuning/jobs/{id}/events`` and
``GET /v1/fine_tuning/jobs`` served in front of FastAPI's router.

Why it departs from the route conventions (``routes/<resource>.py`` reached through FastAPI's routing and
dependency solving): every SDK poller calls these three routes in a loop, and for them FastAPI's own request
handling (matching the path through the included routers, solving the dependencies, its exception and
exit-stack layers) cost more CPU than the route itself: about a third of a retrieve's CPU (cProfile,
``docs/benchmarks.md``, "Poll path"). One API process is bound to one core, so that CPU is throughput.

What it is: a pure ASGI middleware, the innermost (``api/main.py``): the metrics, request id, abuse guard and
body limit still wrap every request it answers. For the three request shapes it does what FastAPI does for
them, with the same code, minus the layers:

- the same dependencies, in FastAPI's order: ``refuse_lone_surrogates`` (every route's), then
  ``current_org`` (authentication through the auth cache, the per-organization rate limit, the abuse
  guard's key-to-organization learning);
- the same route functions of ``api/routes/jobs.py`` (so the same statement, rendering and bytes);
- an error raised by either rendered by the handler FastAPI would pick (``api.core.errors.render``);
  anything else propagates as it would from the router (the outermost middleware's 500);
- ``scope["route"]`` and ``scope["path_params"]`` set as the router sets them (the metrics' route label).

Anything unusual falls through to FastAPI unchanged: another method or path, a ``root_path``, a query on
retrieve, a query parameter these routes do not declare or one given twice, a ``limit`` that is not a plain
decimal within 1..1000 (FastAPI's 422 says why). FastAPI keeps the three routes declared: the OpenAPI schema
lists them and they serve whatever falls through. ``tests/api/test_fastpath.py`` compares the two answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.core.edge import refuse_lone_surrogates
from api.core.errors import HANDLED, render
from api.deps import current_org
from api.routes import jobs
from models.tables import Organization

JOBS = "/v1/fine_tuning/jobs"
EVENTS = "/events"
PAGE_PARAMS = frozenset({"after", "limit"})  # list and list_events (``jobs.Limit``: 1..jobs.MAX_PAGE)
Call = Callable[[Organization], Awaitable[Response]]  # the route, its other arguments bound


def _route_of(endpoint: Callable[..., Any]) -> APIRoute:
    return next(r for r in jobs.router.routes if isinstance(r, APIRoute) and r.endpoint is endpoint)


class FastPath:
    """Serves the poll routes' usual requests itself; passes every other request to ``app`` (FastAPI)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = {fn: _route_of(fn) for fn in (jobs.retrieve, jobs.list_events, jobs.list_jobs)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(JOBS):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        picked = _pick(request) if not scope.get("root_path") else None
        if picked is None:
            await self.app(scope, receive, send)
            return
        endpoint, path_params, call = picked
        scope["route"], scope["endpoint"], scope["path_params"] = self.routes[endpoint], endpoint, path_params
        try:
            await refuse_lone_surrogates(request)
            response = await call(await current_org(request))
        except HANDLED as exc:
            response = await render(request, exc)
        await response(scope, receive, send)


def _pick(request: Request) -> tuple[Callable[..., Any], dict[str, str], Call] | None:
    """(the route function, its path parameters, how to call it) for a request this lane serves."""
    path: str = request.scope["path"]
    query = request.query_params.multi_items()
    if len({name for name, _ in query}) != len(query):  # a name given twice: FastAPI's rules decide
        return None
    if path == JOBS:
        page = _page(query, metadata=True)
        if page is None:
            return None
        return jobs.list_jobs, {}, lambda org: jobs.list_jobs(request, org, **page)
    job_id = path[len(JOBS) + 1 :] if path[len(JOBS)] == "/" else ""
    if job_id.endswith(EVENTS):
        job_id = job_id[: -len(EVENTS)]
        page = _page(query, metadata=False)
        if not job_id or "/" in job_id or page is None:
            return None
        return jobs.list_events, {"job_id": job_id}, lambda org: jobs.list_events(job_id, org, **page)
    if not job_id or "/" in job_id or query:
        return None
    return jobs.retrieve, {"job_id": job_id}, lambda org: jobs.retrieve(job_id, org)


def _page(query: list[tuple[str, str]], *, metadata: bool) -> dict[str, Any] | None:
    """``after`` and ``limit`` as the route's keyword arguments (its own defaults for those not given); None
    for a parameter it does not declare (``metadata[key]`` filters: the list's, read by the route itself) or
    a ``limit`` that is not a plain decimal in 1..jobs.MAX_PAGE."""
    page: dict[str, Any] = {}
    for name, value in query:
        if name == "after":
            page["after"] = value
        elif name == "limit":
            if not (value.isascii() and value.isdigit() and value[0] != "0" and int(value) <= jobs.MAX_PAGE):
                return None
            page["limit"] = int(value)
        elif not (metadata and name.startswith("metadata[") and name.endswith("]")):
            return None
    return page
