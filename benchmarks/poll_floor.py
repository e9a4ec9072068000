"""The floor of ``poll_bench.py``: the plainest FastAPI endpoints, served by the same uvicorn configuration.

``GET /floor``: an ``async def`` that returns a small constant object (no database, no middleware, no
authentication): what FastAPI and uvicorn cost by themselves on this machine. ``GET /select1``: a ``def``
endpoint (threadpool) that runs ``SELECT 1`` on a pooled SQLAlchemy session of the configured database.
"""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text
from typing_extensions import TypedDict  # pydantic reads typing's TypedDict only from Python 3.12

from models.db import new_session

app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)


class Floor(TypedDict):
    object: str
    status: str


class Select1(TypedDict):
    object: str
    value: int | None  # SELECT 1's


@app.get("/floor")
async def floor() -> Floor:
    return {"object": "floor", "status": "ok"}


@app.get("/select1")
def select1() -> Select1:
    with new_session(readonly=True) as session:
        value = session.scalar(text("SELECT 1"))
    return {"object": "select1", "value": value}
