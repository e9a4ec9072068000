"""Our extensions to the jobs API: the safety report (JSON, or as a page), and the downloads of the adapter
and of each checkpoint's adapter (only once the job is released, until its fine-tuned model is deleted, and
never once the provider revoked it).

Both are scrubbed of server paths (``tunegate.redact``): in the adapter archive the base model's directory,
which peft and the train stage record (``adapter_config.json`` ``base_model_name_or_path``, the tokenizer's
``name_or_path``, the model card, ``tunegate_adapter.json``), becomes the public model name.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

from fastapi import APIRouter, BackgroundTasks
from fastapi.responses import FileResponse, HTMLResponse

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.services import crud
from api.services.moderation import audit_line, full_report, job_context, job_report
from models import audit
from models.jobs import check_released
from models.tables import Job
from tunegate.errors import NotFound
from tunegate.jsonfields import JsonObjectField
from tunegate.jsontypes import JsonObject
from tunegate.redact import scrub, scrub_value
from tunegate.report import SafetyReport
from tunegate.reporting import render_report
from tunegate.settings import Settings, get_settings
from tunegate.storage import ObjectMissing, fetch_tree

TEXT_SUFFIXES = (".json", ".md", ".txt", ".yaml", ".yml", ".jinja")

router = APIRouter(prefix="/v1/fine_tuning/jobs", tags=["fine-tuning extensions"])


@router.get("/{job_id}/safety_report", response_model=JsonObjectField)
def safety_report(job_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep) -> JsonObject:
    """The gate's full report (scores, mitigation, base vs fine-tuned ASR, verdict) as JSON, in this version's
    schema (``schema_version``; an older report upgraded)."""
    job = crud.get_job(session, org=org, job_id=job_id)
    report: JsonObject = scrub_value(job_report(job, settings).to_dict(), settings)
    return report


@router.get(
    "/{job_id}/safety_report.html",
    response_class=HTMLResponse,
    responses={200: {"content": {"text/html": {}}}},
)
def safety_report_html(
    job_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> HTMLResponse:
    """The report as one self-contained page: the flagged examples' text, the timeline, moderator actions."""
    job = crud.get_job(session, org=org, job_id=job_id)
    # the server's paths scrubbed from every text; the private keys stay (the typed report needs them, the
    # page shows none of them)
    scrubbed = scrub_value(full_report(session, job, settings).to_dict(), settings, drop_private=False)
    report = SafetyReport.from_dict(scrubbed)
    entries = audit.for_job(session, job.id)
    html = render_report(
        report,
        job=job_context(session, job, entries),
        audit=[audit_line(e) for e in entries],
    )
    return HTMLResponse(
        html,
        headers={
            "content-disposition": f'attachment; filename="{job.id}-report.html"',
            "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
        },
    )


def _base_paths(adapter_dir: Path) -> list[str]:
    """The base model's server-side locations recorded in the adapter's own metadata."""
    found = []
    for name, key in (
        ("adapter_config.json", "base_model_name_or_path"),
        ("tunegate_adapter.json", "base_model_path"),
    ):
        try:
            value = json.loads((adapter_dir / name).read_text(encoding="utf-8")).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(value, str) and value.startswith(("/", "~")):
            found.append(value)
    return sorted(set(found), key=len, reverse=True)


def _public_text(path: Path, model: str, base_paths: list[str]) -> bytes:
    text = scrub(
        path.read_text(encoding="utf-8", errors="replace"),
        get_settings(),
        replacements=dict.fromkeys(base_paths, model),
    )
    if path.name in ("adapter_config.json", "tunegate_adapter.json"):
        try:
            meta = json.loads(text)
        except ValueError:
            return text.encode()
        if isinstance(meta, dict):
            if path.name == "adapter_config.json":
                meta["base_model_name_or_path"] = model
            else:
                meta.pop("base_model_path", None)
                meta["base_model"] = model
            text = json.dumps(meta, indent=2)
    return text.encode()


def _archive(adapter_dir: Path, name: str, model: str) -> Path:
    tmp = tempfile.NamedTemporaryFile(prefix="adapter-", suffix=".tar.gz", delete=False)  # noqa: SIM115
    tmp.close()
    base_paths = _base_paths(adapter_dir)
    with tarfile.open(tmp.name, "w:gz") as tar:
        for path in sorted(adapter_dir.rglob("*")):
            arcname = f"{name}/{path.relative_to(adapter_dir).as_posix()}"
            if path.is_dir() or path.is_symlink() or not path.is_file():
                continue
            if path.suffix in TEXT_SUFFIXES:
                data = _public_text(path, model, base_paths)
                info = tarfile.TarInfo(arcname)
                info.size, info.mtime, info.mode = len(data), int(path.stat().st_mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                info = tar.gettarinfo(str(path), arcname)
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                with path.open("rb") as fh:
                    tar.addfile(info, fh)
    return Path(tmp.name)


def _released_job(session: SessionDep, org: CurrentOrg, job_id: str) -> Job:
    """The job, if its safety gate released it (403 otherwise) and its model was not deleted (404)."""
    job = crud.get_job(session, org=org, job_id=job_id)
    check_released(job)
    return job


def _send(
    ref: str | None, name: str, model: str, background: BackgroundTasks, what: str, settings: Settings
) -> FileResponse:
    """The adapter directory ``ref`` (a local path, or a key in the object store, fetched into a temp
    directory first) as a scrubbed tar.gz; the temp files go once the response is sent."""
    fetched = Path(tempfile.mkdtemp(prefix="adapter-src-"))
    try:
        adapter_dir = fetch_tree(settings, ref, fetched / "adapter") if ref else None
        if adapter_dir is None:
            raise ObjectMissing("")
        archive = _archive(adapter_dir, name, model)
    except ObjectMissing:
        raise NotFound(
            f"the adapter files of {what} are missing", param="fine_tuning_job_id", code="adapter_missing"
        ) from None
    finally:
        shutil.rmtree(fetched, ignore_errors=True)
    background.add_task(archive.unlink, missing_ok=True)
    return FileResponse(archive, media_type="application/gzip", filename=f"{name}.tar.gz")


GZIP: dict[int | str, JsonObject] = {200: {"content": {"application/gzip": {}}}}  # the OpenAPI answer


@router.get("/{job_id}/adapter", response_class=FileResponse, responses=GZIP)
def adapter(
    job_id: str, org: CurrentOrg, session: SessionDep, settings: SettingsDep, background: BackgroundTasks
) -> FileResponse:
    """The LoRA adapter (peft format) as a tar.gz, only for a job whose safety gate released it."""
    job = _released_job(session, org, job_id)
    return _send(job.adapter_path, f"{job.id}-adapter", job.model, background, f"job {job.id}", settings)


@router.get("/{job_id}/checkpoints/{checkpoint_id}/adapter", response_class=FileResponse, responses=GZIP)
def checkpoint_adapter(
    job_id: str,
    checkpoint_id: str,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
    background: BackgroundTasks,
) -> FileResponse:
    """One checkpoint's LoRA adapter (peft format, without the optimizer state) as a tar.gz, under the same
    rule as the final adapter: nothing trained leaves before the job's safety gate released it. (The gate
    evaluated the final adapter; an earlier checkpoint was not evaluated on its own.)"""
    job = _released_job(session, org, job_id)
    ckpt = crud.get_checkpoint(session, job=job, checkpoint_id=checkpoint_id)
    ref = f"{ckpt.path}/adapter" if ckpt.path else None
    name = f"{job.id}-step-{ckpt.step_number}-adapter"
    return _send(ref, name, job.model, background, f"checkpoint {ckpt.id}", settings)
