"""Our extensions to the jobs API: the safety report, and the adapter download (only once released)."""

from __future__ import annotations

import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import FileResponse

from api import crud
from api.deps import CurrentOrg, SessionDep
from tunegate.errors import NotFound, PermissionDenied

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning extensions"])


def _report_file(report_path: str | None) -> Path | None:
    if not report_path:
        return None
    p = Path(report_path)
    if p.is_dir():
        p = p / "report.json"
    return p if p.is_file() else None


@router.get("/{job_id}/safety_report", response_model=dict[str, Any])
def safety_report(job_id: str, org: CurrentOrg, session: SessionDep) -> dict[str, Any]:
    """The gate's full report (scores, mitigation, base vs fine-tuned ASR, verdict) as JSON."""
    job = crud.get_job(session, org=org, job_id=job_id)
    path = _report_file(job.report_path)
    if path is None:
        raise NotFound(f"job {job.id} has no safety report yet (status {job.status}, stage {job.stage})",
                       param="fine_tuning_job_id", code="report_not_ready")
    report = json.loads(path.read_text(encoding="utf-8"))
    return report if isinstance(report, dict) else {"report": report}


def _archive(adapter_dir: Path, name: str) -> Path:
    tmp = tempfile.NamedTemporaryFile(prefix="adapter-", suffix=".tar.gz", delete=False)  # noqa: SIM115
    tmp.close()
    with tarfile.open(tmp.name, "w:gz") as tar:
        tar.add(adapter_dir, arcname=name)
    return Path(tmp.name)


@router.get("/{job_id}/adapter", response_class=FileResponse,
            responses={200: {"content": {"application/gzip": {}}}})
def adapter(job_id: str, org: CurrentOrg, session: SessionDep, background: BackgroundTasks) -> FileResponse:
    """The LoRA adapter (peft format) as a tar.gz, only for a job whose safety gate released it."""
    job = crud.get_job(session, org=org, job_id=job_id)
    if not job.released:
        why = f"error {job.error['code']}" if job.error else f"status {job.status}"
        raise PermissionDenied(f"the adapter of job {job.id} is not released ({why})",
                               param="fine_tuning_job_id", code="adapter_not_released")
    adapter_dir = Path(job.adapter_path) if job.adapter_path else None
    if adapter_dir is None or not adapter_dir.is_dir():
        raise NotFound(f"the adapter files of job {job.id} are missing", param="fine_tuning_job_id",
                       code="adapter_missing")
    archive = _archive(adapter_dir, f"{job.id}-adapter")
    background.add_task(archive.unlink, missing_ok=True)
    return FileResponse(archive, media_type="application/gzip", filename=f"{job.id}-adapter.tar.gz")
