"""Signing and sending one webhook message: the one HTTP path of the delivery task (``worker/webhooks.py``)
and of the API's test delivery (``POST /v1/webhook_endpoints/{id}/test``), so both go through the same
address policy (``tunegate/netguard.py``) and the same signature.

A message is signed per Standard Webhooks, which the openai SDK's ``client.webhooks.unwrap`` verifies:
``webhook-id`` (the event id), ``webhook-timestamp`` (now), ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">`` keyed by the endpoint's ``whsec_`` secret decoded. While a rotated-out secret is
still valid (``rotate_secret`` with ``keep_old_secret_active_for_24_hours``), the header carries one
signature per secret, space-separated, and a receiver verifying with either accepts it.

``post`` resolves the URL's host, refuses it when ANY of its addresses is not allowed, connects to a checked
address (the original name in the ``Host`` header and, for https, as the TLS server name), never re-resolves
the name and follows no redirect. Only the answer's status is read, never its body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from tunegate import netguard
from tunegate.settings import Settings

MAX_ERROR_CHARS = 500
USER_AGENT = "tunegate-webhooks/1"


@dataclass(frozen=True)
class Message:
    """What one attempt sends: ``body`` (the exact bytes every attempt signs) to ``url``, signed with each of
    ``secrets`` (the current one first)."""

    url: str
    secrets: tuple[str, ...]
    event_id: str
    body: str


@dataclass(frozen=True)
class Result:
    """One attempt: ``outcome`` is all a tenant's delivery log shows of it, ``error`` (the detail) goes to the
    server's log only."""

    ok: bool
    status_code: int | None
    error: str | None
    outcome: netguard.Outcome | None = None

    @property
    def shown(self) -> netguard.Outcome:
        return self.outcome or netguard.outcome(self.status_code)


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """One ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``, by the
    ``standardwebhooks`` package (the spec's reference library). A ``whsec_`` secret is base64 and decoded;
    any other is used as its UTF-8 bytes."""
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    return Webhook(key).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)


def signed_headers(message: Message, timestamp: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": message.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": " ".join(
            sign(s, message.event_id, timestamp, message.body) for s in message.secrets
        ),
    }


def failed(exc: Exception) -> Result:
    return Result(ok=False, status_code=None, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])


def post(
    message: Message, settings: Settings, resolver: netguard.Resolver = netguard.system_resolver
) -> Result:
    """One signed POST to a checked address of the URL's host; only a 2xx answer counts (redirects are not
    followed). ``resolver`` answers the host's addresses (``getaddrinfo`` unless a test passes its own)."""
    allow = netguard.Allowlist.parse(settings.webhook_allowed_targets)
    try:
        url = httpx.URL(message.url)
        port = url.port or (443 if url.scheme == "https" else 80)
        host = url.raw_host.decode("ascii")  # IDNA-encoded, as DNS knows it
        addresses = netguard.resolve_checked(host, port, allow, resolver)
    except netguard.AddressRefused as exc:
        return Result(ok=False, status_code=None, error=exc.message, outcome="refused_by_policy")
    except (httpx.InvalidURL, OSError, UnicodeError) as exc:  # OSError: the name does not resolve
        return failed(exc)
    headers = signed_headers(message, int(time.time()))
    headers["host"] = url.netloc.decode("ascii")  # the name the receiver was registered under
    name = netguard.normalize_name(host)
    # https: the TLS server name (SNI) and the name the certificate must match stay the original host
    extensions = {"sni_hostname": name} if url.scheme == "https" and netguard.parse_ip(name) is None else {}
    deadline = time.monotonic() + settings.webhook_timeout_s
    failure: Result | None = None
    # trust_env=False: no proxy from the environment, which would connect to the name, not the address
    with httpx.Client(trust_env=False, follow_redirects=False) as client:
        for ip in addresses:  # in the resolver's order; the next one only when this one cannot be reached
            left = deadline - time.monotonic()
            if left <= 0:
                break
            request = client.build_request(
                "POST",
                url.copy_with(host=str(ip)),
                content=message.body.encode(),
                headers=headers,
                timeout=left,
                extensions=extensions,
            )
            try:
                resp = client.send(request, stream=True)
                resp.close()  # the answer's body is never read: only its status counts
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                failure = failed(exc)
                continue
            except httpx.HTTPError as exc:
                return failed(exc)
            if 200 <= resp.status_code < 300:
                return Result(ok=True, status_code=resp.status_code, error=None)
            return Result(
                ok=False, status_code=resp.status_code, error=f"the receiver answered HTTP {resp.status_code}"
            )
    return failure or failed(TimeoutError(f"no address answered within {settings.webhook_timeout_s}s"))
