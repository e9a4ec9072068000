"""/healthz (no auth): the process answers and the database is reachable, within ``health_timeout_s``.

The check runs in a worker thread under ``models.db.answer_within`` (its connect, ping and statement all end
by the deadline), and the route stops waiting for it at the deadline regardless: a database that accepts
connections but does not answer makes health 503 in time, never a hung probe.

/readyz (no auth): readiness of the configuration (the console's secret); 503 while something is missing.
"""

from __future__ import annotations

from typing import Literal

import anyio
from fastapi import APIRouter, Response
from pydantic import BaseModel
from sqlalchemy import text

from api.deps import SettingsDep
from api.schemas import HealthOut
from models.db import answer_within, read_connection
from tunegate.errors import TransientError

router = APIRouter(tags=["health"])


def _check_database(deadline_s: float) -> None:
    with answer_within(deadline_s), read_connection() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/healthz", response_model=HealthOut)
async def healthz(settings: SettingsDep) -> HealthOut:
    deadline_s = settings.health_timeout_s
    with anyio.move_on_after(deadline_s) as waited:
        await anyio.to_thread.run_sync(_check_database, deadline_s, abandon_on_cancel=True)
    if waited.cancelled_caught:
        raise TransientError(
            f"The database did not answer within the health check's deadline ({deadline_s:g} s).",
            code="database_unavailable",
        )
    return HealthOut(status="ok", database="ok")


class ReadyOut(BaseModel):
    status: Literal["ready", "not_ready"]
    console: Literal["ok", "not_configured"]
    message: str | None = None


@router.get("/readyz", response_model=ReadyOut, include_in_schema=False)
async def readyz(response: Response, settings: SettingsDep) -> ReadyOut:
    """Readiness (no auth, not in the API description): 503 while a part of this API cannot work for lack of
    configuration. Today the moderator console: distributed mode without a console secret. /healthz stays
    liveness (the process answers, the database too), so a container watchdog (tunegate/watchdog.py) never
    restarts an API that a restart would not fix."""
    if settings.console_configured:
        return ReadyOut(status="ready", console="ok")
    response.status_code = 503
    return ReadyOut(
        status="not_ready",
        console="not_configured",
        message="the moderator console has no secret: set TUNEGATE_CONSOLE_SECRET or "
        "TUNEGATE_CONSOLE_SECRET_FILE, the same for every API process",
    )
