"""Client commands over the API, through the official ``openai`` SDK: ``tunegate files upload|list|rm|scan``
and ``tunegate jobs create|list|show|cancel|events|report|download``.

They read the key from TUNEGATE_API_KEY (or OPENAI_API_KEY) and the API from TUNEGATE_BASE_URL (or
OPENAI_BASE_URL; default: the configured API host and port). Lists print one tab-separated row per object,
its id first; ``show`` and ``report`` print JSON.
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, cast

import typer

from cli import options
from cli.errors import UsageError, WaitTimeout, fail
from cli.progress import Progress, ReadProgress
from tunegate.jsontypes import JsonObject

if TYPE_CHECKING:
    import openai
    from openai.types import FileObject
    from openai.types.fine_tuning import FineTuningJob
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    from api.schemas import SafetyScanOut, SafetyScanRecordOut

files_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Training files on the service.")
jobs_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Fine-tuning jobs on the service.")

PROCESSING_S = 600.0  # how long `files upload` waits for the service to check a file
UPLOAD_BAR_BYTES = 1024 * 1024  # a file this large uploads with a progress bar
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


def _file_row(f: FileObject) -> str:
    return f"{f.id}\t{f.filename}\t{f.bytes}\t{f.status}\t{_when(f.created_at)}"


def _upload(client: openai.OpenAI, path: Path, wait: bool) -> FileObject:
    """Upload ``path`` (with a progress bar from ``UPLOAD_BAR_BYTES`` on); with ``wait``, until the service
    has checked it (a rejected file fails)."""
    size = path.stat().st_size
    with path.open("rb") as fh, ReadProgress(fh, size, path.name, enabled=size >= UPLOAD_BAR_BYTES) as body:
        # never retried: the body is a stream read once, and the API keeps every upload it receives (a retry
        # after a lost answer would store the file twice)
        once = client.with_options(max_retries=0)
        f = once.files.create(file=(path.name, cast("IO[bytes]", body)), purpose="fine-tune")
    if wait and f.status not in ("processed", "error"):
        try:
            f = client.files.wait_for_processing(f.id, poll_interval=0.5, max_wait_seconds=PROCESSING_S)
        except RuntimeError as exc:  # the SDK's own give-up
            raise WaitTimeout(f"{f.id} ({path.name}) was not checked within {PROCESSING_S:.0f} s") from exc
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
def files_list(as_json: options.AsJson = False) -> None:
    """Your files: id, name, bytes, status, created (UTC)."""
    client, _ = connect()
    options.emit(client.files.list(), _file_row, as_json)


@files_app.command("show")
def files_show(file_id: Annotated[str, typer.Argument(help="File id (file-...).")]) -> None:
    """The file object as JSON (its status and, when it was rejected, why)."""
    client, _ = connect()
    typer.echo(client.files.retrieve(file_id).model_dump_json(indent=2))


@files_app.command("rm")
def files_rm(file_ids: Annotated[list[str], typer.Argument(help="File ids (file-...).")]) -> None:
    """Delete files."""
    client, _ = connect()
    for file_id in file_ids:
        client.files.delete(file_id)
        typer.echo(f"deleted {file_id}")


def _job_row(job: FineTuningJob) -> str:
    outcome = job.fine_tuned_model or (job.error.code if job.error and job.error.code else "-")
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


def _file_id(client: openai.OpenAI, value: Path | str | None, uploaded: list[str]) -> str | None:
    """The file id of ``value``; a local file is uploaded first (and must pass the service's checks), and its
    id is added to ``uploaded``."""
    if not isinstance(value, Path):
        return value
    f = _upload(client, value, wait=True)
    uploaded.append(str(f.id))
    typer.echo(f"uploaded {value} as {f.id}", err=True)
    return str(f.id)


def _check_model(client: openai.OpenAI, model: str) -> None:
    """Fail on a model the service does not have, before anything is uploaded."""
    import openai

    try:
        client.models.retrieve(model)
    except openai.NotFoundError:
        names = ", ".join(m.id for m in client.models.list())
        raise typer.BadParameter(
            f"no model {model!r} on the service (models: {names})", param_hint="'--model'"
        ) from None


def _remove_uploaded(client: openai.OpenAI, file_ids: list[str]) -> None:
    """Delete the files a failed ``jobs create`` uploaded (a failed delete is said, not hidden)."""
    import openai

    for file_id in file_ids:
        try:
            client.files.delete(file_id)
            typer.echo(f"removed {file_id}, uploaded for the job that was not created", err=True)
        except openai.APIError as exc:
            typer.echo(f"warning: could not remove {file_id}: {exc}", err=True)


SCAN_POLL_S = 1.0  # how often `files scan --wait` asks for the scan
RISKIEST_LINES = 10
FLAGGED_EXIT = 3  # `files scan`: the file is flagged or would be refused (as `finetune` when blocked)


def _scan_row(scan: SafetyScanOut) -> str:
    return f"{scan.id}\t{scan.status}\t{scan.model}\t{scan.file_id}\t{_when(scan.created_at)}"


def _scan(answer: object) -> SafetyScanOut:
    """The safety scan the API answered (an extension: the SDK has no type of it, the API's own is used)."""
    from api.schemas import SafetyScanOut

    return SafetyScanOut.model_validate(answer)


def _wait_scan(client: openai.OpenAI, scan: SafetyScanOut) -> SafetyScanOut:
    """Poll the scan until it has completed or failed, with a progress bar."""
    import time

    # our own loop: a safety scan is not a file, so the SDK's files.wait_for_processing cannot poll it
    with Progress(f"scanning {scan.file_id}") as bar:
        while scan.status in ("queued", "running"):
            bar(scan.progress, scan.status)
            time.sleep(SCAN_POLL_S)
            scan = _scan(client.get(f"/safety_scans/{scan.id}", cast_to=dict))
        bar(scan.progress, scan.status)
    return scan


def _mitigation_line(m: JsonObject) -> str:
    if m.get("refused"):
        return f"mitigation: the file would be refused before training: {m['refused']}"
    return (
        f"mitigation ({m['action']}): {m['lines_kept']} of {m['lines']} lines kept, "
        f"{m['lines_downweighted']} down-weighted, {m['lines_dropped']} dropped; "
        f"{m['examples_injected']} examples injected ({m['safety_examples_injected']} safety, "
        f"{m['contrastive_examples_injected']} contrastive helpful); {m['examples_to_train']} to train on"
    )


def _line_row(r: SafetyScanRecordOut) -> str:
    why = r.reasons[0] if r.reasons else " ".join(r.text.split())[:80]
    return f"line {r.line}\trisk {r.risk:.1f}\t{r.action}\t{why}"


@files_app.command("scan")
def files_scan(
    file: Annotated[
        str,
        typer.Argument(metavar="FILE_OR_ID", help="A file id (file-...) or a local JSONL file to upload."),
    ],
    model: Annotated[str | None, typer.Option(help="Base model (default: the configured default).")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the verdict (a progress bar), then print it.")
    ] = False,
    as_json: options.AsJson = False,
) -> None:
    """Scan a training file before paying for a job: what the safety gate would do with it, line by line
    (a local file is uploaded first). Prints the scan's row; with --wait, the verdict, what mitigation would
    do and the ten riskiest lines. Exit status 3 when the file is flagged or would be refused, 1 when the
    scan failed."""
    from api.schemas import SafetyScanRecordOut
    from tunegate.settings import get_settings

    target = _file_arg(file, "'FILE_OR_ID'")
    client, _ = connect()
    model = model or get_settings().default_model
    _check_model(client, model)  # before any upload: a typo must not leave an orphan file
    uploaded: list[str] = []
    try:
        file_id = _file_id(client, target, uploaded)
        scan = _scan(client.post(f"/files/{file_id}/safety_scan", body={"model": model}, cast_to=dict))
    except Exception:  # a file uploaded only for this scan is removed again, then the failure is reported
        _remove_uploaded(client, uploaded)
        raise
    if wait:
        scan = _wait_scan(client, scan)
    riskiest: list[SafetyScanRecordOut] = []
    if scan.status == "completed":
        params = {"order": "risk", "limit": RISKIEST_LINES}
        page = client.get(f"/safety_scans/{scan.id}/records", options={"params": params}, cast_to=dict)
        riskiest = [SafetyScanRecordOut.model_validate(r) for r in page["data"]]
    verdict, m = scan.verdict, scan.mitigation or {}  # both set once the scan has completed
    if as_json:
        lines = [r.model_dump(mode="json") for r in riskiest]
        typer.echo(json.dumps({"scan": scan.model_dump(mode="json"), "riskiest": lines}, indent=2))
    else:
        typer.echo(_scan_row(scan))
        if scan.status == "completed" and verdict is not None:
            typer.echo(f"verdict: {'FLAGGED' if verdict.flagged else 'ok'} - {verdict.reason}")
            typer.echo(_mitigation_line(m))
            typer.echo(f"riskiest lines ({len(riskiest)}): line, risk, action, why")
            for r in riskiest:
                typer.echo(_line_row(r))
    if scan.status == "failed":
        why = scan.error.message if scan.error else "no reason given"
        fail(f"safety scan {scan.id} failed: {why}")
    if scan.status == "completed" and ((verdict is not None and verdict.flagged) or m.get("refused")):
        raise typer.Exit(FLAGGED_EXIT)


@jobs_app.command("create", cls=options.KnobsCommand)
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
        typer.Option(
            metavar="KNOB=VALUE",
            help="Tighten your organization's safety policy for this job (repeatable; knobs below).",
        ),
    ] = None,
    follow: Annotated[bool, typer.Option("--follow", help="Then follow the job until it ends.")] = False,
) -> None:
    """Create a fine-tuning job; prints its row (id first)."""
    from tunegate.settings import get_settings

    safety = options.checked_job_policy(policy or [])
    training = _file_arg(training_file, "'--training-file'")
    validation = _file_arg(validation_file, "'--validation-file'")
    client, url = connect()
    hp = options.hyperparameters(
        n_epochs=n_epochs, batch_size=batch_size, learning_rate_multiplier=learning_rate_multiplier
    )
    model = model or get_settings().default_model
    _check_model(client, model)  # before any upload: a typo must not leave an orphan file
    uploaded: list[str] = []
    try:
        job = client.fine_tuning.jobs.create(
            model=model,
            training_file=str(_file_id(client, training, uploaded)),
            validation_file=_file_id(client, validation, uploaded),
            suffix=suffix,
            hyperparameters=hp or None,  # type: ignore[arg-type]  # numbers or "auto", as the API takes them
            extra_body={"safety": safety} if safety else None,
            # the SDK's retries resend it: a create the API did but whose answer was lost is not made twice
            extra_headers={"Idempotency-Key": f"tunegate-cli-{uuid.uuid4()}"},
        )
    except Exception:  # the files this command uploaded are removed again, then the failure is reported
        _remove_uploaded(client, uploaded)
        raise
    typer.echo(_job_row(job))
    if follow:
        from cli.service import follow_job

        follow_job(job.id, base_url=url, api_key=str(client.api_key))


@jobs_app.command("list")
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs.")] = 20,
    as_json: options.AsJson = False,
) -> None:
    """Your jobs, newest first: id, status, model, fine-tuned model or error code, created (UTC)."""
    client, _ = connect()
    jobs = itertools.islice(client.fine_tuning.jobs.list(limit=min(limit, 100)), limit)
    options.emit(jobs, _job_row, as_json)


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


@jobs_app.command("pause")
def jobs_pause(job_id: JobId) -> None:
    """Pause a running job at its next checkpoint (``jobs resume`` goes on from there)."""
    client, _ = connect()
    job = client.fine_tuning.jobs.pause(job_id)
    typer.echo(f"{job.id}\t{job.status}")


@jobs_app.command("resume")
def jobs_resume(job_id: JobId) -> None:
    """Resume a paused job (or withdraw a pause that was asked for and has not happened yet)."""
    client, _ = connect()
    job = client.fine_tuning.jobs.resume(job_id)
    typer.echo(f"{job.id}\t{job.status}")


def _checkpoint_row(cp: FineTuningJobCheckpoint) -> str:
    loss = (cp.metrics.train_loss if cp.metrics else None) or "-"
    return f"{cp.id}\t{cp.step_number}\t{cp.fine_tuned_model_checkpoint}\t{loss}\t{_when(cp.created_at)}"


@jobs_app.command("checkpoints")
def jobs_checkpoints(job_id: JobId, as_json: options.AsJson = False) -> None:
    """The job's checkpoints, newest first: id, step, checkpoint model, train loss, created (UTC)."""
    client, _ = connect()
    options.emit(client.fine_tuning.jobs.checkpoints.list(job_id, limit=100), _checkpoint_row, as_json)


@jobs_app.command("events")
def jobs_events(
    job_id: JobId,
    limit: Annotated[int, typer.Option(min=1, max=100, help="The last N events.")] = 100,
    as_json: options.AsJson = False,
) -> None:
    """The job's latest events, oldest first."""
    client, _ = connect()
    page = client.fine_tuning.jobs.list_events(job_id, limit=limit)
    options.emit(reversed(page.data), lambda ev: f"{_when(ev.created_at)}\t{ev.level}\t{ev.message}", as_json)


@jobs_app.command("report")
def jobs_report(
    job_id: JobId,
    out: Annotated[Path | None, typer.Option(help="Write the JSON here instead of printing it.")] = None,
) -> None:
    """The job's safety report (scores, mitigation, base vs fine-tuned attack success rate, verdict)."""
    client, _ = connect()
    report: JsonObject = client.get(f"/fine_tuning/jobs/{job_id}/safety_report", cast_to=dict)
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
