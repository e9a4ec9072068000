"""Answers a route builds itself instead of through FastAPI's serialization: a JSON body serialized once (the
poll routes), and the console's HTML pages and redirects with the headers every console answer carries."""

from __future__ import annotations

from pydantic import BaseModel
from starlette.responses import HTMLResponse, RedirectResponse, Response

# Every console answer: never cached or framed, no referrer; no scripts and no external requests (every
# style is inline, every chart inline SVG).
NO_STORE = {"cache-control": "no-store", "x-frame-options": "DENY", "referrer-policy": "no-referrer"}
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'self'; frame-ancestors 'none'"
)


def json_response(body: BaseModel) -> Response:
    """``body`` as JSON, serialized once by pydantic. A route that declares ``response_model`` and returns
    this skips FastAPI's second validation of the object it just built (the poll routes)."""
    return Response(body.model_dump_json(), media_type="application/json")


def console_page(body: str, status: int = 200) -> HTMLResponse:
    """A console page with the console's headers (``NO_STORE`` and ``CSP``)."""
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, "content-security-policy": CSP})


def console_redirect(url: str) -> RedirectResponse:
    """A 303 to another console page, never cached."""
    return RedirectResponse(url, status_code=303, headers=NO_STORE)
