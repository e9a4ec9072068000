"""THE mapping from errors to HTTP: every error body is ``{"error": {"message", "type", "param", "code"}}``.

tunegate's error tree carries its own status code; FastAPI/Starlette 404/405/422 and any unexpected exception
(500) are rendered in the same shape. A 429 carries ``retry-after``; a 409 carries ``x-should-retry: false``
(the OpenAI SDK retries 409 otherwise). Every error response carries ``x-request-id``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tunegate.errors import RateLimited, TooManyActiveJobs, TunegateError
from tunegate.unicode import escaped

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large", 400: "invalid_request"}


def error_response(
    request: Request,
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None,
    code: str | None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The error body; never fails itself. Text a request carried may hold a lone UTF-16 surrogate, which
    UTF-8 cannot encode: it is escaped (``\\ud800``). Should building the answer fail anyway (e.g. a header
    value that cannot be sent), the answer is a well-formed 500 in the same shape (issue 29)."""
    try:
        hdrs = dict(headers or {})
        request_id = getattr(request.state, "request_id", None)
        if request_id:
            hdrs["x-request-id"] = request_id
        if status == 409:
            hdrs["x-should-retry"] = "false"
        error = {"message": message, "type": type_, "param": param, "code": code}
        body = {"error": {k: v if v is None else escaped(str(v)) for k, v in error.items()}}
        return JSONResponse(body, status_code=status, headers=hdrs)
    except Exception:  # the answer must still be an error in our shape, not the server's plain-text 500
        log.exception("could not render the %s error response; answering 500", status)
        return _fallback_500(request)


_FALLBACK_500 = {
    "error": {
        "message": "The server had an error while processing your request.",
        "type": "server_error",
        "param": None,
        "code": "internal_error",
    }
}


def _fallback_500(request: Request) -> JSONResponse:
    """A 500 built only from constants (and the request id, when it is plain ASCII)."""
    request_id = getattr(request.state, "request_id", None)
    if isinstance(request_id, str) and request_id.isascii() and request_id.isprintable():
        return JSONResponse(_FALLBACK_500, status_code=500, headers={"x-request-id": request_id})
    return JSONResponse(_FALLBACK_500, status_code=500)


async def _tunegate(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, TunegateError)
    headers = {"retry-after": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    if isinstance(exc, TooManyActiveJobs) and headers is not None:
        headers["x-should-retry"] = "false"  # a job must end first: an SDK's quick retries cannot help
    status = exc.status_code if 400 <= exc.status_code < 600 else 500
    if status >= 500:
        log.error("request failed: %s", exc, exc_info=exc)
    return error_response(
        request, status, exc.message, type_=exc.error_type, param=exc.param, code=exc.code, headers=headers
    )


def _loc_param(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc[1:] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    if parts and parts[0] in ("body",):
        parts = parts[1:]
    return ".".join(parts) or None


async def _validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    param = _loc_param(tuple(first.get("loc", ())))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    message = f"{param}: {msg}" if param else msg
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return error_response(
        request, 422, message, type_="invalid_request_error", param=param, code="invalid_value"
    )


async def _http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = str(exc.detail) if exc.detail else "error"
    if exc.status_code == 404 and message == "Not Found":
        message = f"Unknown route: {request.method} {request.url.path}"
    if exc.status_code == 405:
        message = f"Method {request.method} is not allowed on {request.url.path}"
    return error_response(
        request,
        exc.status_code,
        message,
        type_="invalid_request_error",
        param=None,
        code=code,
        headers=dict(exc.headers or {}),
    )


async def _database(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(
        request,
        503,
        "The database is temporarily unavailable; retry shortly.",
        type_="server_error",
        param=None,
        code="transient",
        headers={"retry-after": "1"},
    )


async def _data(request: Request, exc: Exception) -> JSONResponse:
    # A value the database cannot hold (e.g. a NUL character in a string on PostgreSQL).
    log.info("database refused a value: %s", exc)
    return error_response(
        request,
        400,
        "A parameter holds a value that cannot be stored or compared (e.g. a NUL character).",
        type_="invalid_request_error",
        param=None,
        code="invalid_value",
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        request,
        500,
        "The server had an error while processing your request.",
        type_="server_error",
        param=None,
        code="internal_error",
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]

# The errors answered in this shape (each class and its subclasses, the most specific entry winning, as
# Starlette's lookup does). Any other exception is unexpected: ``_unexpected``'s 500, from the outermost
# middleware (FastAPI installs an ``Exception`` handler there, past the request-id and abuse-guard layers).
HANDLERS: dict[type[Exception], Handler] = {
    TunegateError: _tunegate,
    RequestValidationError: _validation,
    StarletteHTTPException: _http,
    OperationalError: _database,
    PoolTimeout: _database,  # no pooled connection freed in time
    DataError: _data,
}
HANDLED: tuple[type[Exception], ...] = tuple(HANDLERS)


async def render(request: Request, exc: Exception) -> Response:
    """The answer to ``exc``, one of ``HANDLED``, rendered by the handler FastAPI would call for it (the poll
    path's fast lane, ``api/fastpath.py``, which runs in front of FastAPI's exception middleware)."""
    handler = next(HANDLERS[cls] for cls in type(exc).__mro__ if cls in HANDLERS)
    return await handler(request, exc)


def install(app: FastAPI) -> None:
    for exc_class, handler in HANDLERS.items():
        app.add_exception_handler(exc_class, handler)
    app.add_exception_handler(Exception, _unexpected)
