"""Delivering webhook events (``models/webhooks.py`` writes them): one task per delivery, ``short`` queue.

An attempt claims its delivery with one compare-and-set ``UPDATE`` (``pending`` and due -> ``sending``), so a
duplicate message, a second worker or a delivered event sends nothing; it POSTs the event's stored body
signed per Standard Webhooks (``tunegate/webhook_send.py``: ``webhook-id`` = the event id on every attempt,
``webhook-timestamp`` = now, ``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, the
key being the endpoint's ``whsec_`` secret decoded, and also the rotated-out one while it stays valid), which
the openai SDK's ``client.webhooks.unwrap`` verifies. A 2xx answer is ``delivered``; anything else schedules
the next attempt (``Settings.webhook_retry_backoff_s`` doubling, capped at ``webhook_max_retry_delay_s``):
the first ``webhook_task_retries`` retries the task enqueues itself with a countdown, later ones ``sweep``
(run by every worker's reaper thread) sends when due, so a receiver that is down for hours still gets every
event once it is back; ``webhook_give_up_after_s`` after the event a failed attempt marks the delivery
``failed``. Delivery is at least once: a worker killed between the POST and its record leaves the delivery
``sending`` until its lease ends, then it is sent again with the same ``webhook-id`` (receivers deduplicate
on it).

Where an attempt may go is ``tunegate/netguard.py``'s policy, applied by ``tunegate.webhook_send.post`` (the
API's test delivery goes through the same function): the URL's host is resolved, refused when ANY of its
addresses is not public (loopback, private, link-local, ...; ``Settings.webhook_allowed_targets`` allows
hosts or networks) and the POST connects to a checked address, the original name going in the ``Host``
header and, for https, as the TLS server name the certificate is verified against; nothing re-resolves the
name, and redirects are not followed. The delivery row (which tenants read) keeps only the attempt's class
(``2xx``..``5xx``, ``connection_failed``, ``refused_by_policy``); the receiver's words go to this log alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from models import webhooks as hooks
from models.base import utcnow
from models.db import session_scope
from models.tables import WebhookDelivery, WebhookEndpoint, WebhookEvent
from tunegate import metrics, netguard, queue
from tunegate.settings import Settings, get_settings
from tunegate.webhook_send import Message, Result, post, sign, signed_headers

__all__ = [
    "Attempt",
    "Message",
    "Result",
    "claim",
    "deliver",
    "post",
    "record",
    "sign",
    "signed_headers",
    "sweep",
]

log = logging.getLogger(__name__)
SWEEP_BATCH = 500


@dataclass(frozen=True)
class Attempt:
    """What one claimed attempt sends; ``number`` is the delivery's attempt count including this one."""

    delivery_id: str
    number: int
    message: Message
    event_created_at: datetime

    @property
    def url(self) -> str:
        return self.message.url

    @property
    def event_id(self) -> str:
        return self.message.event_id


# not Celery's retry_backoff: the schedule is the row's (next_attempt_at, attempts, sweep), not a message's
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
        message=Message(
            url=endpoint.url,
            secrets=hooks.signing_secrets(endpoint, now),
            event_id=event.id,
            body=event.body,
        ),
        event_created_at=event.created_at,
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
        values.update(status="failed", last_error=result.shown)
    else:
        delay = retry_delay_s(attempt.number, settings)
        due = now + timedelta(seconds=delay)
        self_scheduled = attempt.number <= settings.webhook_task_retries
        values.update(
            status="pending",
            next_attempt_at=due,
            enqueued_at=due if self_scheduled else None,
            last_error=result.shown,  # the class only: the row is the tenant's delivery log
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
    """The metrics label of a failed attempt: ``http_4xx``/``http_5xx``, ``connection``,
    ``refused_by_policy``; ``gave_up`` last."""
    if gave_up:
        return "gave_up"
    if result.outcome == "refused_by_policy":
        return "refused_by_policy"
    if result.status_code is not None:
        return f"http_{result.status_code // 100}xx"
    return "connection"


def deliver(
    delivery_id: str,
    settings: Settings | None = None,
    resolver: netguard.Resolver = netguard.system_resolver,
) -> str:
    """The task body: one attempt at one delivery; returns its status (``skipped`` when there was nothing
    to do). Never raises for a receiver's failure: that is recorded and retried."""
    settings = settings or get_settings()
    with session_scope() as s:
        attempt = claim(s, delivery_id, settings)
    if attempt is None:
        return "skipped"
    result = post(attempt.message, settings, resolver)
    with session_scope() as s:
        status, delay = record(s, attempt, result, settings)
    if status == "delivered":
        log.info("webhook delivery %s (event %s) delivered", delivery_id, attempt.event_id)
        return status
    metrics.count_webhook_failure(failure_reason(result, gave_up=delay is None))
    hours = settings.webhook_give_up_after_s / 3600
    log.warning(
        "webhook delivery %s (event %s) to %s attempt %d failed (%s): %s; %s",
        delivery_id,
        attempt.event_id,
        attempt.url[:200],
        attempt.number,
        result.shown,
        result.error,
        f"gave up after {attempt.number} attempts over {hours:g} h"
        if delay is None
        else f"next attempt in {delay:.0f}s",
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
