"""The ``tunegate`` command; each area registers its commands from its own module (admin, scoring, local,
service, remote, webhooks, audit). ``HELP`` is what users see."""

from __future__ import annotations

import logging
import sys

import typer
from pydantic import ValidationError
from pydantic_settings import SettingsError

from cli import admin, audit, local, remote, scoring, service, use, webhooks
from cli.errors import DEBUG_KEY, RootGroup, settings_error_line
from tunegate import logs
from tunegate.settings import Settings, get_settings

HELP = """Fine-tune safely: an OpenAI-compatible fine-tuning service that scores the training data,
mitigates it, and releases an adapter only when its safety evaluation passes.

\b
Use the service (key: TUNEGATE_API_KEY or OPENAI_API_KEY;
address: TUNEGATE_BASE_URL or OPENAI_BASE_URL):
  files upload|list|show|rm          training files
  files scan FILE_OR_ID [--wait]     what the gate would do, before any training
  jobs create|list|show|cancel       fine-tuning jobs
  jobs pause|resume|checkpoints      pause, go on, the saved epochs
  jobs events|report|download        events, safety report, adapter
  follow JOB                         a job's progress until it ends
  webhooks create|list|delete|test   endpoints for job events [rotate-secret]
  (every listing and show: --json)
\b
Run the service:
  serve [--detach]                   API and its workers, on this machine
  api | worker | reap                the parts, when distributed
  db upgrade | keys | orgs           database, API keys, policies
  audit [--org] [--action]           the moderators' audit log
  models prepare [--aligned]         build the base models once
  demo                               the whole product, two datasets
\b
Work locally, without the service:
  score FILE | eval | finetune FILE
\b
Use the result:
  export JOB_OR_DIR --out DIR        the adapter [--merged] [--gguf]
  chat MODEL [--adapter DIR]         talk to a model in the terminal
"""


app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, add_completion=False, help=HELP, cls=RootGroup)
for _module in (remote, webhooks, admin, audit, scoring, local, service, use):
    _module.register(app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"tunegate {version('tunegate')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            typer.echo("tunegate (not installed)")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show the full traceback when a command fails."),
) -> None:
    """Options for every command."""
    del version
    ctx.meta[DEBUG_KEY] = debug


SERVICES = ("api", "worker", "serve")  # long-running commands whose log lines are their output


def main() -> None:
    try:
        settings = _log_settings(sys.argv[1:])
    except (ValidationError, SettingsError) as exc:  # a bad TUNEGATE_* variable: one line, not a traceback
        typer.echo(f"error: {settings_error_line(exc)}", err=True)
        sys.exit(2)
    logs.configure(settings)  # JSON lines (TUNEGATE_LOG_FORMAT=text: key=value) on stderr
    for name in ("httpx", "httpx2"):  # a line per request (the SDK's client is httpx2) would break the bars
        logging.getLogger(name).setLevel(logging.WARNING)
    if not _is_service(sys.argv[1:]):  # libraries' deprecation notices are for developers, not at a terminal
        logging.getLogger("py.warnings").setLevel(logging.ERROR)
    app()


def _log_settings(args: list[str]) -> Settings:
    """The services log at ``TUNEGATE_LOG_LEVEL`` (INFO); a command a person runs at a terminal logs only
    warnings unless that variable is set, so its progress bars and answers are not buried in log lines."""
    settings = get_settings()
    if _is_service(args) or "log_level" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"log_level": "WARNING"})


def _is_service(args: list[str]) -> bool:
    return next((a for a in args if not a.startswith("-")), "") in SERVICES
