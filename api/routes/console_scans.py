"""The console's scans page (``/console/scans``): every organization's pre-flight safety scans beside their
jobs, newest first, filtered by organization and status; each row links the jobs that train on the same
file. Read-only (a scan takes no moderator action); the same login as every console page."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, TypedDict
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.core.console_auth import current_staff, to_login
from api.core.responses import console_page
from api.deps import SessionDep, SettingsDep
from models import scans
from models.tables import Job, Organization, SafetyScan
from tunegate.errors import InvalidRequest, TunegateError
from tunegate.jsontypes import JsonObject
from tunegate.reporting import render_page

router = APIRouter(prefix="/console", include_in_schema=False)

PER_PAGE = 50
JOBS_PER_FILE = 5  # jobs on the scanned file named in its row, newest first


@router.get("/scans", response_class=HTMLResponse)
def scans_page(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    org: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    staff = current_staff(request, session, settings)
    if staff is None:
        return to_login()
    try:
        if status and status not in scans.STATUSES:
            raise InvalidRequest(f"status must be one of {', '.join(scans.STATUSES)}", param="status")
        flt = scans.ScanFilter(org_id=org or None, status=status or None)
        rows, total = scans.search(session, flt, offset=(page - 1) * PER_PAGE, limit=PER_PAGE)
    except TunegateError as exc:
        error = render_page("console/error.html", staff=staff, message=exc.message, code=exc.code)
        return console_page(error, exc.status_code)
    orgs = list(
        session.execute(select(Organization.id, Organization.name).order_by(Organization.name)).tuples()
    )
    names = dict(orgs)
    filters = {"org": org, "status": status}
    params = {k: v for k, v in filters.items() if v}
    page_html = render_page(
        "console/scans.html",
        staff=staff,
        rows=[_row(session, r, names) for r in rows],
        total=total,
        page=page,
        pages=max(1, -(-total // PER_PAGE)),
        filters=filters,
        orgs=orgs,
        statuses=scans.STATUSES,
        link=lambda p: "/console/scans?" + urlencode({**params, "page": p}),
    )
    return console_page(page_html)


class ScanRow(TypedDict):
    """One scan on the scans page."""

    id: str
    org: str  # its name
    file_id: str
    model: str
    status: str
    created_at: datetime
    completed_at: datetime | None
    flagged: bool | None  # the verdict (None: the scan has not completed)
    reason: str
    mitigation: JsonObject | None  # what the mitigate stage would do (the scan's summary of it)
    error: str | None  # why it failed
    jobs: list[str]  # the organization's newest jobs on the file


def _row(session: Session, scan: SafetyScan, names: dict[str, str]) -> ScanRow:
    jobs = session.scalars(
        select(Job.id)
        .where(Job.org_id == scan.org_id, Job.training_file == scan.file_id)
        .order_by(Job.id.desc())
        .limit(JOBS_PER_FILE)
    )
    verdict = scan.verdict
    return {
        "id": scan.id,
        "org": names.get(scan.org_id, scan.org_id),
        "file_id": scan.file_id,
        "model": scan.model,
        "status": scan.status,
        "created_at": scan.created_at,
        "completed_at": scan.completed_at,
        "flagged": verdict.get("flagged") if scan.status == "completed" and verdict else None,
        "reason": verdict.get("reason", "") if verdict else "",
        "mitigation": scan.mitigation if scan.status == "completed" else None,
        "error": scan.error.get("message") if scan.status == "failed" and scan.error else None,
        "jobs": list(jobs),
    }
