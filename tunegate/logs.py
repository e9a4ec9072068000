"""Structured logs: one JSON object per line from the API, the workers and the CLI (``configure``).

Every line carries the fields of the current *log scope*: ``request_id`` (the API's ``x-request-id``) and
``org_id`` (once the caller has authenticated) for a request, ``job_id`` and ``stage`` in a worker. Plain
``logging`` calls anywhere in the code base (and in libraries: uvicorn, Celery, SQLAlchemy) come out the same
way, through structlog's ``ProcessorFormatter`` on the root logger.

A scope is a dict held in a context variable. ``bind`` updates that dict in place, so a field bound inside a
threadpool call (FastAPI runs sync dependencies in a copy of the request's context) is seen by every later
line of the request, in any copy of its context.

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
from collections.abc import Iterator, MutableMapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog

from tunegate.settings import Settings

_SCOPE: ContextVar[dict[str, Any] | None] = ContextVar("tunegate_log_scope", default=None)


@contextmanager
def log_scope(**fields: Any) -> Iterator[dict[str, Any]]:
    """Every log line written in this context (until the block ends) carries ``fields`` and the
    enclosing scope's fields; ``bind`` adds more."""
    scope = {**(_SCOPE.get() or {}), **fields}
    token = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(token)


_LIVE = "_live"  # a scope's key for its liveness flag (a shared list: empty once the request has ended)


def request_scope(**fields: Any) -> dict[str, Any]:
    """Start the scope of one request (an ASGI app's task): ``fields`` only, nothing inherited. It stays
    current for the rest of the task (no reset) and goes quiet when the task ends (see the module docstring).
    """
    live = [True]
    scope: dict[str, Any] = {**fields, _LIVE: live}
    _SCOPE.set(scope)
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop: nothing to end with
        task = None
    if task is not None:
        task.add_done_callback(lambda _task: live.clear())
    return scope


def bind(**fields: Any) -> None:
    """Add fields to the current scope (no-op outside one: there is nothing to attach them to)."""
    scope = _SCOPE.get()
    if scope is not None:
        scope.update(fields)


def bind_job(job_id: str, stage: str | None = None) -> AbstractContextManager[dict[str, Any]]:
    """The scope of a worker's stage task: its lines carry ``job_id`` (and ``stage`` when given)."""
    return log_scope(job_id=job_id, **({"stage": stage} if stage else {}))


def _add_scope(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    scope = _SCOPE.get() or {}
    if not scope.get(_LIVE, True):  # a finished request's scope, reached through a copied context
        return event
    for key, value in scope.items():
        if key != _LIVE:
            event.setdefault(key, value)
    return event


def _drop_color(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    event.pop("color_message", None)  # uvicorn's copy of the message with terminal colour codes
    return event


def _processors() -> list[Any]:
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
    render: list[Any] = (
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
