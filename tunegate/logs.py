"""Structured logs: one JSON object per line from the API, the workers and the CLI (``configure``).

Every line carries the fields of the current *log scope*: ``request_id`` (the API's ``x-request-id``) and
``org_id`` (once the caller has authenticated) for a request, ``job_id`` and ``stage`` in a worker. Plain
``logging`` calls anywhere in the code base (and in libraries: uvicorn, Celery, SQLAlchemy) come out the same
way, through structlog's ``ProcessorFormatter`` on the root logger.

A scope's fields are a dict held in a context variable. ``bind`` updates that dict in place, so a field
bound inside a threadpool call (FastAPI runs sync dependencies in a copy of the request's context) is seen by
every later line of the request, in any copy of its context.

A request's scope (``request_scope``) starts empty, whatever the context it was started in holds, and lasts
until the request's task ends, not only while the request-id middleware runs: the lines written about the
request after it (the unhandled-error handler of the outermost middleware, uvicorn's own report of the
exception) carry its fields too. asyncio copies the current context into callbacks registered during a
request (a keep-alive connection's reader, so the next request on that connection starts in a copy of this
one's context): a scope goes quiet when its task ends, so no later line can show another request's fields.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TextIO, TypeAlias

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from tunegate.settings import Settings

# a structured log field's value: what a JSON line can show as it is
LogValue: TypeAlias = str | int | float | bool | None


@dataclass(frozen=True)
class _Scope:
    """The fields of a log scope (``bind`` adds to them in place) and the liveness of the request it
    belongs to, shared by the scopes opened inside it: empty once the request has ended."""

    fields: dict[str, LogValue]
    live: list[bool]


_SCOPE: ContextVar[_Scope | None] = ContextVar("tunegate_log_scope", default=None)


@contextmanager
def log_scope(**fields: LogValue) -> Iterator[dict[str, LogValue]]:
    """Every log line written in this context (until the block ends) carries ``fields`` and the
    enclosing scope's fields; ``bind`` adds more."""
    outer = _SCOPE.get()
    scope = _Scope({**(outer.fields if outer else {}), **fields}, outer.live if outer else [True])
    token = _SCOPE.set(scope)
    try:
        yield scope.fields
    finally:
        _SCOPE.reset(token)


def request_scope(**fields: LogValue) -> dict[str, LogValue]:
    """Start the scope of one request (an ASGI app's task): ``fields`` only, nothing inherited. It stays
    current for the rest of the task (no reset) and goes quiet when the task ends (see the module docstring).
    """
    live = [True]
    scope = _Scope(dict(fields), live)
    _SCOPE.set(scope)
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop: nothing to end with
        task = None
    if task is not None:
        task.add_done_callback(lambda _task: live.clear())
    return scope.fields


def bind(**fields: LogValue) -> None:
    """Add fields to the current scope (no-op outside one: there is nothing to attach them to)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.fields.update(fields)


def bind_job(job_id: str, stage: str | None = None) -> AbstractContextManager[dict[str, LogValue]]:
    """The scope of a worker's stage task: its lines carry ``job_id`` (and ``stage`` when given)."""
    return log_scope(job_id=job_id, **({"stage": stage} if stage else {}))


def _add_scope(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    scope = _SCOPE.get()
    if scope is None or not scope.live:  # none, or a finished request's, reached through a copied context
        return event
    for key, value in scope.fields.items():
        event.setdefault(key, value)
    return event


def _drop_color(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colour codes
    return event


def _processors() -> list[Processor]:
    """What every line gets, from structlog and from stdlib ``logging`` alike."""
    return [
        _add_scope,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """Ours on the root logger (replaced, never duplicated, when ``configure`` runs again). Without a
    stream of its own it writes to whatever ``sys.stderr`` is at the time (test runners swap it)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream)
        self.follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self.follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def configure(settings: Settings, stream: TextIO | None = None) -> None:
    """Route all logging of this process to ``stream`` (stderr) in ``settings.log_format``."""
    render: list[Processor] = (
        [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
        if settings.log_format == "json"
        else [structlog.dev.ConsoleRenderer(colors=False)]
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        # logging's extra={...} fields too
        foreign_pre_chain=[*_processors(), structlog.stdlib.ExtraAdder(), _drop_color],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *render],
    )
    structlog.configure(
        processors=[*_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = _Handler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _Handler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    logging.captureWarnings(True)  # Python warnings become log lines (logger py.warnings) too
