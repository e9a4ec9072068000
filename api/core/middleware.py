"""Request ids on every response, request-body limits enforced while the body is read, and the abuse guard
(failed-authentication throttle per client address, bounded concurrency per organization).

``BodyLimitMiddleware`` counts the bytes of the ASGI ``http.request`` messages as the application receives
them (a declared ``Content-Length`` is only an early refusal; a chunked body has none) and answers 413 in the
OpenAI error shape the moment the limit is passed, closing the connection (``Connection: close``): the rest
of the body is never read, so neither memory (JSON bodies) nor disk (Starlette spools multipart uploads to a
temp file before the route runs) can be exhausted by one request. Uploads (``POST /v1/files``) are limited
to ``max_upload_bytes`` plus multipart framing; every other body to ``max_body_bytes``.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.core.errors import error_response
from api.core.ratelimit import AUTH_FAILURES, IN_FLIGHT, key_digest, retry_after
from tunegate.logs import request_scope
from tunegate.settings import get_settings

log = logging.getLogger(__name__)

MULTIPART_SLACK = 64 * 1024  # multipart framing and the `purpose` field around the file itself
UPLOAD_PATH = "/v1/files"
PART_PATH = re.compile(r"/v1/uploads/[^/]+/parts")


class RequestIdMiddleware:
    """Give every request an id: ``x-request-id`` on the response (error handlers read ``request.state``).

    Every log line written while the request is served carries it (``tunegate.logs.request_scope``: a scope
    of its own that outlives this middleware until the request's task ends, so the line of an unhandled error,
    logged by the outermost middleware and by uvicorn, carries it too), and one line per request says how it
    was answered (method, route path, status, duration).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id
        start, status = time.perf_counter(), 500  # 500: the application failed before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        request_scope(request_id=request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                },
            )


@dataclass(frozen=True)
class BodyLimit:
    max_bytes: int
    message: str
    param: str | None
    code: str


def body_limit(scope: Scope) -> BodyLimit:
    settings = get_settings()
    if scope.get("method") == "POST" and scope.get("path") == UPLOAD_PATH:
        return BodyLimit(
            settings.max_upload_bytes + MULTIPART_SLACK,
            f"file is larger than the limit of {settings.max_upload_bytes} bytes",
            "file",
            "file_too_large",
        )
    if scope.get("method") == "POST" and PART_PATH.fullmatch(scope.get("path", "")):
        return BodyLimit(
            settings.max_upload_part_bytes + MULTIPART_SLACK,
            f"an upload part is larger than the limit of {settings.max_upload_part_bytes} bytes",
            "data",
            "part_too_large",
        )
    return BodyLimit(
        settings.max_body_bytes,
        f"request body is larger than the limit of {settings.max_body_bytes} bytes",
        None,
        "request_too_large",
    )


class BodyTooLarge(Exception):
    """Raised into the application from ``receive`` once the body passes its limit."""


class BodyLimitMiddleware:
    """413 (OpenAI error shape) as soon as a request body passes its limit; nothing past it is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit(scope)
        if _declared_length(scope) > limit.max_bytes:
            await _refuse(scope, receive, send, limit)
            return
        received, tripped, started = 0, False, False
        unread = _declared_length(scope) > 0 or _header(scope, b"transfer-encoding") is not None

        async def limited_receive() -> Message:
            nonlocal received, tripped, unread
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                unread = unread and bool(message.get("more_body", False))
                if received > limit.max_bytes:
                    tripped = True
                    raise BodyTooLarge(limit.message)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if tripped and not started:
                return  # the application's answer to the aborted read (often a 400): ours replaces it
            if message["type"] == "http.response.start":
                started = True
                if unread:  # answered before the body ended (e.g. 400 too_many_parts): do not read the rest
                    message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if started:
                raise
        except Exception:
            if not tripped or started:
                raise
            log.info("request body over its limit; the application raised while aborting", exc_info=True)
        if tripped and not started:
            await _refuse(scope, receive, send, limit)


async def _refuse(scope: Scope, receive: Receive, send: Send, limit: BodyLimit) -> None:
    # Connection: close: the rest of the body is never read, and the server closes the connection after this
    # answer rather than read and discard it to find the next request
    response = error_response(
        Request(scope),
        413,
        limit.message,
        type_="invalid_request_error",
        param=limit.param,
        code=limit.code,
        headers={"connection": "close"},
    )
    await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> bytes | None:
    return next((value for key, value in scope.get("headers", []) if key == name), None)


def _declared_length(scope: Scope) -> int:
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return -1


def _authorization(scope: Scope) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            return value.decode("latin-1").strip() or None
    return None


class AbuseGuardMiddleware:
    """Refuse (429, ``retry-after``) before the application runs:

    - any request carrying a key from a client address whose failed authentications (401 answers to a
      request that sent a key) drained its bucket (``Settings.auth_failures_per_minute``): the address is
      throttled, not the keys it tries, so a guessed key is not tested either;
    - a request of an organization that already has ``Settings.max_concurrent_requests_per_org`` in flight
      (counted per key until the key has authenticated once; then per organization).

    Requests without a key pass through (they get their 401). Runs inside ``RequestIdMiddleware``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = _authorization(scope) if scope["type"] == "http" else None
        if key is None:
            await self.app(scope, receive, send)
            return
        settings = get_settings()
        client = (scope.get("client") or ("unknown", 0))[0]
        request_id = scope.get("state", {}).get("request_id")
        wait = await _off_loop(AUTH_FAILURES.wait, client, settings.auth_failures_per_minute)
        if wait:
            log.warning("%s: refused: too many failed authentications from %s", request_id, client)
            await _too_many(
                scope,
                receive,
                send,
                wait,
                "Too many failed authentication attempts from your address; retry later.",
                "auth_failures_rate_limited",
            )
            return
        owner = IN_FLIGHT.owner(key_digest(key))
        limit = settings.max_concurrent_requests_per_org
        if limit > 0 and not IN_FLIGHT.acquire(owner, limit):
            log.info("%s: refused: %s has %d requests in flight", request_id, owner, limit)
            await _too_many(
                scope,
                receive,
                send,
                1.0,
                f"Too many concurrent requests for your organization "
                f"(at most {limit} at once); retry shortly.",
                "too_many_concurrent_requests",
            )
            return
        status, held = 0, limit > 0

        async def done() -> None:
            nonlocal held
            if held:
                held = False
                IN_FLIGHT.release(owner)
            if status == 401:
                await _off_loop(AUTH_FAILURES.take, client, settings.auth_failures_per_minute)

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                await done()  # before the last byte leaves: a client that has its answer has its slot back
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if held:  # the application failed before answering
                await done()


async def _off_loop(call: Callable[[str, int], float], key: str, per_minute: int) -> float:
    """``call(key, per_minute)``, in a worker thread when the windows are in Redis (never block the loop)."""
    if AUTH_FAILURES.shared:
        return await run_in_threadpool(call, key, per_minute)
    return call(key, per_minute)


async def _too_many(scope: Scope, receive: Receive, send: Send, wait: float, message: str, code: str) -> None:
    response = error_response(
        Request(scope),
        429,
        message,
        type_="rate_limit_error",
        param=None,
        code=code,
        headers={"retry-after": str(retry_after(wait))},
    )
    await response(scope, receive, send)
