"""Delivering webhook events (``models/webhooks.py`` writes them): one task per delivery, ``cpu`` queue.

An attempt claims its delivery with one compare-and-set ``UPDATE`` (``pending`` and due -> ``sending``), so a
duplicate message, a second worker or a delivered event sends nothing; it POSTs the event's stored body
signed per Standard Webhooks (``webhook-id`` = the event id on every attempt, ``webhook-timestamp`` = now,
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, the key being the endpoint's
``whsec_`` secret decoded), which the openai SDK's ``client.webhooks.unwrap`` verifies. A 2xx answer is
``delivered``; anything else schedules the next attempt (``Settings.webhook_retry_backoff_s`` doubling, capped
at ``webhook_max_retry_delay_s``): the first ``webhook_task_retries`` retries the task enqueues itself with a
countdown, later ones ``sweep`` (run by every worker's reaper thread) sends when due, so a receiver that is
down for hours still gets every event once it is back; ``webhook_give_up_after_s`` after the event a failed
attempt marks the delivery ``failed``. Delivery is at least once: a worker killed between the POST and its
record leaves the delivery ``sending`` until its lease ends, then it is sent again with the same
``webhook-id`` (receivers deduplicate on it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models.base import utcnow
from models.db import session_scope
from models.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tunegate import metrics, queue
from tunegate.settings import Settings, get_settings

log = logging.getLogger(__name__)
MAX_ERROR_CHARS = 500
SWEEP_BATCH = 500


@dataclass(frozen=True)
class Attempt:
    """What one claimed attempt sends; ``number`` is the delivery's attempt count including this one."""

    delivery_id: str
    number: int
    url: str
    secret: str
    event_id: str
    body: str
    event_created_at: datetime


@dataclass(frozen=True)
class Result:
    ok: bool
    status_code: int | None
    error: str | None


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` value: ``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}``."""
    key = base64.b64decode(secret.removeprefix("whsec_")) if secret.startswith("whsec_") else secret.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signed_headers(attempt: Attempt, timestamp: int) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "tunegate-webhooks/1",
        "webhook-id": attempt.event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(attempt.secret, attempt.event_id, timestamp, attempt.body),
    }


def retry_delay_s(attempts: int, settings: Settings) -> float:
    """Delay after failed attempt number ``attempts``: base, 2*base, 4*base ... capped."""
    return float(
        min(settings.webhook_max_retry_delay_s, settings.webhook_retry_backoff_s * 2 ** (attempts - 1))
    )


def claim(
    session: Session, delivery_id: str, settings: Settings, now: datetime | None = None
) -> Attempt | None:
    """Take a due ``pending`` delivery for one attempt (None: delivered, failed, taken, not due or gone)."""
    now = now or utcnow()
    number = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery_id,
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
        )
        .values(
            status="sending",
            attempts=WebhookDelivery.attempts + 1,
            locked_until=now + timedelta(seconds=settings.webhook_requeue_after_s),
        )
        .returning(WebhookDelivery.attempts)
        .execution_options(synchronize_session=False)
    ).scalar_one_or_none()
    if number is None:
        return None
    event, endpoint = session.execute(
        select(WebhookEvent, WebhookEndpoint)
        .join(WebhookDelivery, WebhookDelivery.event_id == WebhookEvent.id)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .where(WebhookDelivery.id == delivery_id)
    ).one()
    return Attempt(
        delivery_id=delivery_id,
        number=int(number),
        url=endpoint.url,
        secret=endpoint.secret,
        event_id=event.id,
        body=event.body,
        event_created_at=event.created_at,
    )


def post(attempt: Attempt, settings: Settings) -> Result:
    """One signed POST; only a 2xx answer counts (redirects are not followed)."""
    try:
        resp = httpx.post(
            attempt.url,
            content=attempt.body.encode(),
            headers=signed_headers(attempt, int(time.time())),
            timeout=settings.webhook_timeout_s,
            follow_redirects=False,
        )
    except httpx.HTTPError as exc:
        return Result(ok=False, status_code=None, error=f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS])
    if 200 <= resp.status_code < 300:
        return Result(ok=True, status_code=resp.status_code, error=None)
    return Result(
        ok=False, status_code=resp.status_code, error=f"the receiver answered HTTP {resp.status_code}"
    )


def record(
    session: Session, attempt: Attempt, result: Result, settings: Settings, now: datetime | None = None
) -> tuple[str, float | None]:
    """Store the attempt's outcome; returns the delivery's status and, when retried, the delay until then.

    Fenced on this attempt's number: an attempt whose lease ran out (and was retried) writes nothing.
    """
    now = now or utcnow()
    values: dict[str, object] = {"last_status_code": result.status_code, "locked_until": None}
    delay: float | None = None
    if result.ok:
        values.update(status="delivered", delivered_at=now, last_error=None)
    elif (now - attempt.event_created_at).total_seconds() >= settings.webhook_give_up_after_s:
        hours = settings.webhook_give_up_after_s / 3600
        values.update(
            status="failed",
            last_error=f"{result.error}; gave up after {attempt.number} attempts over {hours:g} h",
        )
    else:
        delay = retry_delay_s(attempt.number, settings)
        due = now + timedelta(seconds=delay)
        self_scheduled = attempt.number <= settings.webhook_task_retries
        values.update(
            status="pending",
            next_attempt_at=due,
            enqueued_at=due if self_scheduled else None,
            last_error=result.error,
        )
    res = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == attempt.delivery_id,
            WebhookDelivery.status == "sending",
            WebhookDelivery.attempts == attempt.number,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return "superseded", None
    return str(values["status"]), delay


def failure_reason(result: Result, *, gave_up: bool) -> str:
    """The metrics label of a failed attempt: ``http_4xx``/``http_5xx``, ``connection``; ``gave_up`` last."""
    if gave_up:
        return "gave_up"
    if result.status_code is not None:
        return f"http_{result.status_code // 100}xx"
    return "connection"


def deliver(delivery_id: str, settings: Settings | None = None) -> str:
    """The task body: one attempt at one delivery; returns its status (``skipped`` when there was nothing
    to do). Never raises for a receiver's failure: that is recorded and retried."""
    settings = settings or get_settings()
    with session_scope() as s:
        attempt = claim(s, delivery_id, settings)
    if attempt is None:
        return "skipped"
    result = post(attempt, settings)
    with session_scope() as s:
        status, delay = record(s, attempt, result, settings)
    if status == "delivered":
        log.info("webhook delivery %s (event %s) delivered", delivery_id, attempt.event_id)
        return status
    metrics.count_webhook_failure(failure_reason(result, gave_up=delay is None))
    log.warning(
        "webhook delivery %s (event %s) attempt %d failed: %s; %s",
        delivery_id,
        attempt.event_id,
        attempt.number,
        result.error,
        "giving up" if delay is None else f"next attempt in {delay:.0f}s",
    )
    if delay is not None and attempt.number <= settings.webhook_task_retries:
        _send(delivery_id, countdown=delay)
    return status


def _send(delivery_id: str, countdown: float | None = None) -> bool:
    try:
        queue.enqueue(queue.DELIVER_WEBHOOK, delivery_id, countdown=countdown)
    except Exception as exc:  # the broker is away: the row is due, so the next sweep sends it
        log.warning("could not enqueue webhook delivery %s (%s); the sweep will send it", delivery_id, exc)
        return False
    return True


def sweep(settings: Settings | None = None, now: datetime | None = None) -> list[str]:
    """Send every due delivery that has no live task message; returns their ids. Safe from many workers.

    Frees attempts whose lease ran out (a killed worker), then claims due ``pending`` rows whose message was
    never sent, was sent over ``webhook_requeue_after_s`` ago, or was left to the sweep (retries past
    ``webhook_task_retries``) with one compare-and-set ``UPDATE`` of ``enqueued_at``, and enqueues them.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    stale = now - timedelta(seconds=settings.webhook_requeue_after_s)
    with session_scope() as s:
        s.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.status == "sending", WebhookDelivery.locked_until < now)
            .values(status="pending", next_attempt_at=now, enqueued_at=None, locked_until=None)
            .execution_options(synchronize_session=False)
        )
        due = (
            WebhookDelivery.status == "pending",
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.enqueued_at.is_(None), WebhookDelivery.enqueued_at <= stale),
        )
        ids = list(
            s.scalars(select(WebhookDelivery.id).where(*due).order_by(WebhookDelivery.id).limit(SWEEP_BATCH))
        )
        if not ids:
            return []
        taken = s.scalars(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(ids), *due)
            .values(enqueued_at=now)
            .returning(WebhookDelivery.id)
            .execution_options(synchronize_session=False)
        )
        claimed = sorted(taken)
    return [d for d in claimed if _send(d)]
