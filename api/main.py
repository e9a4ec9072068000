"""The FastAPI application (``api.main:app``). Never imports torch, transformers or peft (a test checks)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.concurrency import run_in_threadpool

from api.core import errors
from api.core.edge import refuse_lone_surrogates
from api.core.metrics import MetricsMiddleware
from api.core.middleware import AbuseGuardMiddleware, BodyLimitMiddleware, RequestIdMiddleware
from api.deps import CurrentOrg
from api.fastpath import FastPath
from api.routes import (
    console,
    console_scans,
    files,
    health,
    jobs,
    metrics,
    models,
    releases,
    safety_scans,
    uploads,
    webhooks,
)
from api.services.recovery import maintain, sweep_storage
from tunegate import logs
from tunegate import metrics as counting
from tunegate.jsontypes import JsonObject
from tunegate.settings import get_settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Temp uploads and orphaned objects a killed process left behind are removed before serving. Then, in
    # the background, files left 'uploaded' by a previous process are processed (every one, fairly across
    # organizations) and stale temp uploads are swept periodically (api/services/recovery.py).
    try:
        await run_in_threadpool(sweep_storage)
    except Exception as exc:  # the schema may not be migrated yet: serve anyway, /healthz reports it
        log.warning("could not recover storage: %s", exc)
    stop = threading.Event()
    upkeep = asyncio.create_task(maintain(stop))
    upkeep.add_done_callback(_upkeep_ended)
    try:
        yield
    finally:
        stop.set()  # the recovery thread ends after its current file
        upkeep.cancel()
        await asyncio.wait([upkeep])


def _upkeep_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the background upkeep stopped", exc_info=task.exception())


def create_app(*, fast_path: bool = True) -> FastAPI:
    # Only /healthz is public: the schema is served to authenticated callers, /metrics to admin keys, and no
    # docs UI is mounted. Each API process logs JSON lines and counts into the shared metrics directory.
    settings = get_settings()
    logs.configure(settings)
    counting.setup(settings)
    app = FastAPI(
        title="tunegate",
        version="0.1.0",
        lifespan=_lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        description="OpenAI-compatible Files and Fine-tuning API with a safety gate.",
        # every route: 400 for a string holding a lone UTF-16 surrogate, before anything stores it
        dependencies=[Depends(refuse_lone_surrogates)],
    )
    errors.install(app)
    for router in (
        health.router,
        files.router,
        uploads.router,
        jobs.router,
        releases.router,
        models.router,
        webhooks.router,
        safety_scans.router,
        console.router,
        console_scans.router,
        metrics.router,
    ):
        app.include_router(router)
    # outermost last: request timing, request id, then the abuse guard (before any body is read), then the
    # body limits, then the poll path's fast lane (api/fastpath.py; ``fast_path=False``: FastAPI serves
    # every request, as the tests compare); every answer of the inner ones carries the request id and is timed
    if fast_path:
        app.add_middleware(FastPath)
    app.add_middleware(BodyLimitMiddleware)
    app.add_middleware(AbuseGuardMiddleware)
    app.add_middleware(RequestIdMiddleware)
    app.add_middleware(MetricsMiddleware)

    @app.get("/openapi.json", include_in_schema=False, response_model=None)
    def read_openapi(org: CurrentOrg) -> JsonObject:
        del org
        return app.openapi()

    return app


app = create_app()
