"""Client commands over the API, through the official ``openai`` SDK: ``tunegate files upload|list|rm`` and
``tunegate jobs create|list|show|cancel|events|report|download``.

They read the key from TUNEGATE_API_KEY (or OPENAI_API_KEY) and the API from TUNEGATE_BASE_URL (or
OPENAI_BASE_URL; default: the configured API host and port). Lists print one tab-separated row per object,
its id first; ``show`` and ``report`` print JSON.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli import options
from cli.errors import UsageError, fail

if TYPE_CHECKING:
    import openai

files_app = typer.Typer(no_args_is_help=True, help="Training files on the service.")
jobs_app = typer.Typer(no_args_is_help=True, help="Fine-tuning jobs on the service.")

PROCESSING_S = 600.0  # how long `files upload` waits for the service to check a file
ExistingFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A training file (JSONL).")
]


def connect() -> tuple[openai.OpenAI, str]:
    """An SDK client for the configured API and key, and the API's URL; no key is a usage error."""
    from cli.client import sdk_client
    from tunegate.settings import get_client_settings, get_settings

    client_settings = get_client_settings()
    if not client_settings.api_key:
        raise UsageError("no API key: set TUNEGATE_API_KEY (or OPENAI_API_KEY)")
    url = client_settings.url(get_settings())
    return sdk_client(url, client_settings.api_key), url


def _when(timestamp: int | None) -> str:
    return f"{datetime.fromtimestamp(timestamp, UTC):%Y-%m-%d %H:%M:%S}" if timestamp else "-"


def _file_row(f: Any) -> str:
    return f"{f.id}\t{f.filename}\t{f.bytes}\t{f.status}\t{_when(f.created_at)}"


def _upload(client: openai.OpenAI, path: Path, wait: bool) -> Any:
    """Upload ``path``; with ``wait``, until the service has checked it (a rejected file fails)."""
    with path.open("rb") as fh:
        f = client.files.create(file=(path.name, fh), purpose="fine-tune")
    deadline = time.monotonic() + PROCESSING_S
    while wait and f.status not in ("processed", "error") and time.monotonic() < deadline:
        time.sleep(0.5)
        f = client.files.retrieve(f.id)
    if f.status == "error":
        fail(f"{f.id} ({path.name}) was rejected: {f.status_details}")
    return f


@files_app.command("upload")
def files_upload(
    file: ExistingFile,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the service has checked the file.")
    ] = True,
) -> None:
    """Upload a training file; prints its row (id first). A file the service rejects fails the command."""
    client, _ = connect()
    typer.echo(_file_row(_upload(client, file, wait)))


@files_app.command("list")
def files_list() -> None:
    """Your files: id, name, bytes, status, created (UTC)."""
    client, _ = connect()
    for f in client.files.list():
        typer.echo(_file_row(f))


@files_app.command("rm")
def files_rm(file_ids: Annotated[list[str], typer.Argument(help="File ids (file-...).")]) -> None:
    """Delete files."""
    client, _ = connect()
    for file_id in file_ids:
        client.files.delete(file_id)
        typer.echo(f"deleted {file_id}")


def _job_row(job: Any) -> str:
    extra = getattr(job, "error", None)
    outcome = job.fine_tuned_model or (extra.code if extra and extra.code else "-")
    return f"{job.id}\t{job.status}\t{job.model}\t{outcome}\t{_when(job.created_at)}"


def _file_arg(value: str | None, option: str) -> Path | str | None:
    """A local file to upload, or a file id as given; anything else is a usage error."""
    if value is None:
        return None
    if Path(value).is_file():
        return Path(value)
    if value.startswith("file-"):
        return value
    raise typer.BadParameter(f"{value!r} is neither a file id (file-...) nor a local file", param_hint=option)


def _file_id(client: openai.OpenAI, value: Path | str | None) -> str | None:
    """The file id of ``value``; a local file is uploaded first (and must pass the service's checks)."""
    if not isinstance(value, Path):
        return value
    f = _upload(client, value, wait=True)
    typer.echo(f"uploaded {value} as {f.id}", err=True)
    return str(f.id)


@jobs_app.command("create")
def jobs_create(
    training_file: Annotated[
        str, typer.Option(help="A file id (file-...) or a local JSONL file to upload first.")
    ],
    model: Annotated[str | None, typer.Option(help="Base model (default: the configured default).")] = None,
    validation_file: Annotated[str | None, typer.Option(help="A file id or a local JSONL file.")] = None,
    suffix: Annotated[str | None, typer.Option(help="Added to the fine-tuned model's name.")] = None,
    n_epochs: Annotated[
        str | None, typer.Option(callback=options.number_or_auto(int), metavar="N|auto", help="Epochs.")
    ] = None,
    batch_size: Annotated[
        str | None, typer.Option(callback=options.number_or_auto(int), metavar="N|auto", help="Batch size.")
    ] = None,
    learning_rate_multiplier: Annotated[
        str | None,
        typer.Option(
            callback=options.number_or_auto(float), metavar="X|auto", help="Learning-rate multiplier."
        ),
    ] = None,
    policy: Annotated[
        list[str] | None,
        typer.Option(help="KNOB=VALUE: tighten your organization's safety policy for this job (repeatable)."),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Then follow the job until it ends.")] = False,
) -> None:
    """Create a fine-tuning job; prints its row (id first)."""
    from tunegate.settings import get_settings

    safety = options.parse_policy(policy or [], options.job_policy_keys())
    training = _file_arg(training_file, "'--training-file'")
    validation = _file_arg(validation_file, "'--validation-file'")
    client, url = connect()
    hp = options.hyperparameters(
        n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )
    job = client.fine_tuning.jobs.create(
        model=model or get_settings().default_model,
        training_file=str(_file_id(client, training)),
        validation_file=_file_id(client, validation),
        suffix=suffix,
        hyperparameters=hp or None,  # type: ignore[arg-type]  # numbers or "auto", as the API takes them
        extra_body={"safety": safety} if safety else None,
    )
    typer.echo(_job_row(job))
    if follow:
        from cli.service import follow_job

        follow_job(job.id, base_url=url, api_key=str(client.api_key))


@jobs_app.command("list")
def jobs_list(limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 20) -> None:
    """Your jobs, newest first: id, status, model, fine-tuned model or error code, created (UTC)."""
    client, _ = connect()
    for n, job in enumerate(client.fine_tuning.jobs.list(limit=min(limit, 100))):
        if n >= limit:
            break
        typer.echo(_job_row(job))


JobId = Annotated[str, typer.Argument(help="Job id (ftjob-...).")]


@jobs_app.command("show")
def jobs_show(job_id: JobId) -> None:
    """The job as JSON."""
    client, _ = connect()
    typer.echo(client.fine_tuning.jobs.retrieve(job_id).model_dump_json(indent=2))


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobId) -> None:
    """Cancel a job (a running one stops at its next step)."""
    client, _ = connect()
    job = client.fine_tuning.jobs.cancel(job_id)
    typer.echo(f"{job.id}\t{job.status}")


@jobs_app.command("events")
def jobs_events(
    job_id: JobId, limit: Annotated[int, typer.Option(min=1, max=100, help="The last N events.")] = 100
) -> None:
    """The job's latest events, oldest first."""
    client, _ = connect()
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    for ev in reversed(page.data):
        typer.echo(f"{_when(ev.created_at)}\t{ev.level}\t{ev.message}")


@jobs_app.command("report")
def jobs_report(
    job_id: JobId,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here instead of printing it.")] = None,
) -> None:
    """The job's safety report (scores, mitigation, base vs fine-tuned attack success rate, verdict)."""
    client, _ = connect()
    report: dict[str, Any] = client.get(f"/fine_tuning/jobs/{job_id}/safety_report", cast_to=dict)
    text = json.dumps(report, indent=2)
    if out is None:
        typer.echo(text)
        return
    out.write_text(text + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}")


@jobs_app.command("download")
def jobs_download(
    job_id: JobId,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the tar.gz (default: JOB-adapter.tar.gz here).")
    ] = None,
) -> None:
    """Download the LoRA adapter (peft format, tar.gz) of a job whose safety gate released it."""
    import openai

    client, _ = connect()
    archive = client.get(f"/fine_tuning/jobs/{job_id}/adapter", cast_to=openai.HttpxBinaryResponseContent)
    target = out or Path(f"{job_id}-adapter.tar.gz")
    target.write_bytes(archive.content)
    typer.echo(f"wrote {target} ({len(archive.content)} bytes)")


def register(app: typer.Typer) -> None:
    """Add ``files`` and ``jobs`` to the root app."""
    app.add_typer(files_app, name="files")
    app.add_typer(jobs_app, name="jobs")
