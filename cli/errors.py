"""The one error path of the ``tunegate`` command.

Every command lets expected failures propagate; the root group (``RootGroup``) turns them into one line on
stderr and exit status 1. Wrong usage (a bad option value, a missing file) is a usage error of typer's
parser, ``typer.BadParameter`` or ``UsageError`` below: one line and exit status 2. Anything else is a bug
and keeps its traceback. ``--debug`` (or ``TUNEGATE_DEBUG=1``) keeps the traceback of expected failures too.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from tunegate.errors import TunegateError

DEBUG_KEY = "tunegate.debug"
UPGRADE_HINT = "the database has no tunegate tables yet: run `tunegate db upgrade` first"
UNREACHABLE_S = 300.0  # default: how long the API may stay unreachable before a follower gives up


class UsageError(typer.BadParameter):
    """Wrong usage a command finds itself (e.g. no API key): one line, exit status 2, with where to read the
    right usage, like the usage errors of typer's parser. Typer's public usage error is ``BadParameter``
    (typer vendors click, whose exception classes are private to it); this one shows its message as is,
    not as "Invalid value: ..."."""

    def format_message(self) -> str:
        return self.message


class WaitTimeout(TimeoutError):
    """A followed job did not end, or the API stayed unreachable, within the given time."""


def fail(message: str) -> NoReturn:
    """End the command with ``message`` on one line and exit status 1 (a failed operation)."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _api_status_line(exc: Any) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    message = body.get("message") or exc.message
    code = body.get("code")
    return f"{message} ({code}, HTTP {exc.status_code})" if code else f"{message} (HTTP {exc.status_code})"


def _database_line(exc: Exception) -> str | None:
    from sqlalchemy.exc import OperationalError, ProgrammingError

    if not isinstance(exc, OperationalError | ProgrammingError):
        return None
    text = str(exc.orig).lower()
    if "no such table" in text or ("relation" in text and "does not exist" in text):
        return UPGRADE_HINT
    if isinstance(exc, OperationalError):
        return f"cannot use the database: {str(exc.orig).strip().splitlines()[0]}"
    return None


def one_line(exc: BaseException) -> str | None:
    """The user-facing line for an expected failure; None for anything else (a bug: keep the traceback)."""
    import openai

    if isinstance(exc, TunegateError):
        return exc.message
    if isinstance(exc, openai.APIStatusError):
        return _api_status_line(exc)
    if isinstance(exc, openai.APIConnectionError):
        url, why = exc.request.url, exc.__cause__ or exc
        return f"cannot reach the tunegate API at {url.scheme}://{url.netloc.decode()}: {why}"
    if isinstance(exc, WaitTimeout):
        return str(exc)
    if isinstance(exc, Exception) and type(exc).__module__.startswith("sqlalchemy"):
        return _database_line(exc)
    return None


def settings_error_line(exc: Exception) -> str:
    """A settings error (pydantic's validation of the ``TUNEGATE_*`` variables, or a value that is not the
    JSON a field needs) on one line, naming the variable."""
    from pydantic import ValidationError

    from tunegate.settings import Settings

    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else "?"
            info = Settings.model_fields.get(field)
            shown = "" if info is not None and not info.repr else "=" + repr(err.get("input"))[:80]
            parts.append(f"TUNEGATE_{field.upper()}{shown}: {err['msg']}")
        return "bad setting " + "; ".join(parts)
    text = str(exc)
    match = re.search(r'field "([^"]+)"', text)
    if match:
        return f"bad setting TUNEGATE_{match.group(1).upper()}: not valid JSON for this field"
    return f"bad setting: {text.splitlines()[0] if text else type(exc).__name__}"


def debug_enabled(ctx: typer.Context) -> bool:
    from tunegate.settings import get_settings

    return bool(ctx.meta.get(DEBUG_KEY)) or get_settings().debug


def usage_line(exc: typer.TyperException) -> str:
    """A usage error on one line, with where to read the right usage."""
    line = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{line} (see '{ctx.command_path} --help')" if ctx is not None else line


class RootGroup(TyperGroup):
    """The root command group: wrong usage ends as one line and exit status 2; expected failures of any
    subcommand as one line and exit status 1."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except typer.TyperException as exc:  # typer's usage errors (click's, vendored) and ours
            ctx = getattr(exc, "ctx", None)
            if ctx is not None and exc.format_message() == ctx.get_help():  # no_args_is_help: the help itself
                typer.echo(exc.format_message(), err=True, color=ctx.color)
            else:
                typer.echo(f"error: {usage_line(exc)}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: Any) -> Any:  # typer's click Context (typer.Context's base class is not public)
        try:
            return super().invoke(ctx)
        except Exception as exc:  # every failure is looked at: expected ones become one line, bugs re-raise
            line = one_line(exc)
            if line is None or debug_enabled(ctx):
                raise
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(1) from exc
