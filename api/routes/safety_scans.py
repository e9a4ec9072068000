"""Pre-flight safety scans (an extension): ``POST /v1/files/{file_id}/safety_scan`` starts one, the client
polls ``GET /v1/safety_scans/{id}`` and pages through ``GET /v1/safety_scans/{id}/records``. The worker runs
the job's own score stage and the mitigate stage's plan on the file (``worker/scan.py``)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.schemas import ListOut, SafetyScanCreateIn, SafetyScanOut, SafetyScanRecordOut
from api.services.scans import create_scan, records_page, scan_out
from models import scans

router = APIRouter(prefix="/v1", tags=["safety-scans"])


@router.post("/files/{file_id}/safety_scan", response_model=SafetyScanOut)
def create(
    file_id: str, body: SafetyScanCreateIn, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> SafetyScanOut:
    return scan_out(create_scan(session, org=org, file_id=file_id, body=body, settings=settings))


@router.get("/safety_scans", response_model=ListOut[SafetyScanOut])
def list_scans(
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    file_id: Annotated[str | None, Query(max_length=64)] = None,
) -> ListOut[SafetyScanOut]:
    """The organization's scans, newest first (``file_id``: of that file only)."""
    rows, more = scans.page(session, org_id=org.id, after=after, limit=limit, file_id=file_id)
    return ListOut[SafetyScanOut].page([scan_out(r) for r in rows], more)


@router.get("/safety_scans/{scan_id}", response_model=SafetyScanOut)
def retrieve(scan_id: str, org: CurrentOrg, session: SessionDep) -> SafetyScanOut:
    return scan_out(scans.get(session, org_id=org.id, scan_id=scan_id))


@router.get("/safety_scans/{scan_id}/records", response_model=ListOut[SafetyScanRecordOut])
def list_records(
    scan_id: str,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Literal["line", "risk"] = "line",
) -> ListOut[SafetyScanRecordOut]:
    """The scan's records, in file order or riskiest first (``order=risk``)."""
    row = scans.get(session, org_id=org.id, scan_id=scan_id)
    data, more = records_page(settings, row, after=after, limit=limit, order=order)
    return ListOut[SafetyScanRecordOut].page(data, more)
