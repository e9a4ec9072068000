"""The request edge's text check, a dependency of every route (``create_app``): no string of a request may
hold a lone UTF-16 surrogate.

JSON lets ``\\ud800`` through as a valid escape, and the decoded ``str`` cannot be encoded: a job stored
with one in its metadata answered 500 on create and on every later list, retrieve and cancel of its
organization (issue 29). A multipart form with ``charset=unicode_escape`` decodes to the same. Path and
query parameters are percent-decoded with replacement and headers as Latin-1, so they cannot hold one; they
are checked anyway (a few short strings). The answer is 400 ``invalid_unicode`` naming the field.

The body is the one FastAPI has already read and parsed for the route (``request.json()`` and
``request.form()`` are cached on the request): a route without a body field (the streaming uploads, the
GETs) reads nothing here. For a UTF-8 JSON body, a regex over its bytes skips walking the decoded value
when no surrogate can be in it.
"""

from __future__ import annotations

import email.message
import json
import re
from typing import Any

from fastapi import params
from starlette.datastructures import UploadFile
from starlette.requests import Request

from tunegate.errors import InvalidRequest
from tunegate.unicode import escaped, has_surrogate, lone_surrogate_path

# In UTF-8 JSON bytes a lone surrogate is an escape (\ud800) or its raw 3-byte form (ED A0..BF xx), which
# ``json.loads`` of bytes decodes with "surrogatepass".
_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def refused(param: str) -> InvalidRequest:
    name = escaped(param) or "body"
    return InvalidRequest(
        f"{name}: the text holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not "
        "valid Unicode; send UTF-8 text or escape whole surrogate pairs",
        param=name,
        code="invalid_unicode",
    )


def _check_pairs(items: list[tuple[str, Any]]) -> None:
    for key, value in items:
        if has_surrogate(key) or (isinstance(value, str) and has_surrogate(value)):
            raise refused(key)


def _is_json(request: Request) -> bool:
    """Whether FastAPI parsed the body as JSON: ``application/json`` or ``+json`` (with its default strict
    content type, a body without a content type is not parsed, and its validation refuses it)."""
    ctype = request.headers.get("content-type")
    if not ctype:
        return False
    message = email.message.Message()
    message["content-type"] = ctype
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


async def _check_json_body(request: Request) -> None:
    raw = await request.body()  # already read by FastAPI
    if not raw:
        return
    if json.detect_encoding(raw) == "utf-8" and _SURROGATE_BYTES.search(raw) is None:
        return
    body = await request.json()  # parsed by FastAPI already: cached on the request
    where = lone_surrogate_path(body)
    if where is not None:
        raise refused(where)


async def refuse_lone_surrogates(request: Request) -> None:
    """400 when any string of the request (path, query, JSON or form body) holds a lone surrogate."""
    _check_pairs(list(request.path_params.items()))
    _check_pairs(request.query_params.multi_items())
    route = request.scope.get("route")
    body_field = getattr(route, "body_field", None)
    if body_field is None or request.method in ("GET", "HEAD"):
        return
    if isinstance(body_field.field_info, params.Form):
        form = await request.form()  # parsed by FastAPI already: cached on the request
        _check_pairs([(k, v) for k, v in form.multi_items() if not isinstance(v, UploadFile)])
    elif _is_json(request):
        await _check_json_body(request)
