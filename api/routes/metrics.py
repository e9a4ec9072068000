"""``GET /metrics``: Prometheus text format, for provider staff only (an admin key as a bearer token)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from api.core.metrics import exposition
from api.deps import AdminKey

router = APIRouter(tags=["operations"])


@router.get("/metrics", include_in_schema=False)
def read_metrics(admin: AdminKey) -> Response:
    del admin
    return Response(content=exposition(), media_type=CONTENT_TYPE_LATEST)
