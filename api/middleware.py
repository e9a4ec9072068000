"""Request ids on every response, and an early 413 for uploads whose declared size is over the limit."""

from __future__ import annotations

import secrets

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response
from tunegate.settings import get_settings

MULTIPART_SLACK = 64 * 1024  # multipart framing and the `purpose` field around the file itself


class RequestIdMiddleware:
    """Give every request an id: ``x-request-id`` on the response (error handlers read ``request.state``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = "req_" + secrets.token_hex(12)
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", request_id.encode()))
                message["headers"] = headers
            await send(message)

        if _declared_too_large(scope):
            limit = get_settings().max_upload_bytes
            response = error_response(Request(scope), 413, f"file is larger than the limit of {limit} bytes",
                                      type_="invalid_request_error", param="file", code="file_too_large")
            await response(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def _declared_too_large(scope: Scope) -> bool:
    if scope.get("method") != "POST" or scope.get("path") != "/v1/files":
        return False
    for key, value in scope.get("headers", []):
        if key == b"content-length":
            try:
                return int(value) > get_settings().max_upload_bytes + MULTIPART_SLACK
            except ValueError:
                return False
    return False
