"""Webhooks: an organization's endpoints, and the outbox of job events they receive.

``emit`` writes one ``WebhookEvent`` (the exact JSON body, OpenAI's event shape) and one ``WebhookDelivery``
per subscribed endpoint in the caller's transaction: ``models.jobs.transition`` calls it for
``succeeded``/``failed``/``cancelled``, other code for our own events (``flagged``, ``repaired``,
``overridden``). Nothing is sent unless that transaction commits: an ``after_commit`` hook then enqueues
one delivery task per new row (``worker/webhooks.py``); if the broker is away, the periodic sweep sends it.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.base import new_id, unix, utcnow
from models.tables import Job, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tunegate import queue
from tunegate.errors import InvalidRequest, NotFound

log = logging.getLogger(__name__)

STATUS_EVENTS = {
    "succeeded": "fine_tuning.job.succeeded",
    "failed": "fine_tuning.job.failed",
    "cancelled": "fine_tuning.job.cancelled",
}
EVENT_TYPES = (
    *STATUS_EVENTS.values(),
    "fine_tuning.job.flagged",
    "fine_tuning.job.repaired",
    "fine_tuning.job.overridden",
)
MAX_ENDPOINTS = 20  # per organization
MAX_URL_CHARS = 2048
_NEW_DELIVERIES = "tunegate_webhook_deliveries"  # session.info key: ids to enqueue after commit


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format the openai SDK decodes: ``whsec_<base64>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def check_url(url: str | None) -> str:
    """An absolute http(s) URL with a host, or ``InvalidRequest`` naming ``url``."""
    if not url:
        raise InvalidRequest("'url' is required: the http(s) URL that receives the events", param="url")
    if len(url) > MAX_URL_CHARS:
        raise InvalidRequest(
            f"'url' is longer than {MAX_URL_CHARS} characters", param="url", code="invalid_url"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as exc:
        raise InvalidRequest(f"'url' is not a valid URL: {exc}", param="url", code="invalid_url") from exc
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidRequest(
            f"'url' must be an absolute http:// or https:// URL with a host, got {url[:100]!r}",
            param="url",
            code="invalid_url",
        )
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise InvalidRequest("'url' holds whitespace or control characters", param="url", code="invalid_url")
    return url


def check_events(events: list[str] | None) -> list[str]:
    """The requested event types, deduplicated in order, or ``InvalidRequest`` naming ``events``."""
    if not events:
        raise InvalidRequest(
            f"'events' must list at least one event type: {', '.join(EVENT_TYPES)}", param="events"
        )
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(
            f"'events' holds unknown event types {unknown[:5]}; known: {', '.join(EVENT_TYPES)}",
            param="events",
            code="invalid_event_type",
        )
    return list(dict.fromkeys(events))


def create_endpoint(
    session: Session, *, org_id: str, url: str | None, events: list[str] | None
) -> WebhookEndpoint:
    """Validate and add an endpoint with a fresh secret (the caller commits and shows the secret once)."""
    row = WebhookEndpoint(org_id=org_id, url=check_url(url), events=check_events(events), secret=new_secret())
    count = len(list_endpoints(session, org_id=org_id))
    if count >= MAX_ENDPOINTS:
        raise InvalidRequest(
            f"the organization already has {count} webhook endpoints, the most allowed; delete one first",
            code="too_many_webhooks",
        )
    session.add(row)
    session.flush()
    return row


def list_endpoints(session: Session, *, org_id: str) -> list[WebhookEndpoint]:
    """Newest first."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    return list(session.scalars(stmt.order_by(WebhookEndpoint.id.desc())))


def get_endpoint(session: Session, *, org_id: str, endpoint_id: str) -> WebhookEndpoint:
    """The organization's endpoint; another tenant's id answers exactly like a missing one."""
    row = session.scalar(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.org_id == org_id)
    )
    if row is None:
        raise NotFound(f"No such webhook endpoint: {endpoint_id}", param="webhook_id")
    return row


def delete_endpoint(session: Session, *, org_id: str, endpoint_id: str) -> None:
    """Remove the endpoint and its delivery log (a delivery in flight finds its row gone and stops)."""
    row = get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    session.delete(row)
    session.flush()


def list_deliveries(
    session: Session, *, endpoint: WebhookEndpoint, after: str | None, limit: int
) -> tuple[list[tuple[WebhookDelivery, WebhookEvent]], bool]:
    """The endpoint's delivery log, newest first; ``after`` is the last delivery id the client saw."""
    stmt = (
        select(WebhookDelivery, WebhookEvent)
        .join(WebhookEvent, WebhookEvent.id == WebhookDelivery.event_id)
        .where(WebhookDelivery.endpoint_id == endpoint.id)
    )
    if after:
        stmt = stmt.where(WebhookDelivery.id < after)
    rows = [(d, e) for d, e in session.execute(stmt.order_by(WebhookDelivery.id.desc()).limit(limit + 1))]
    return rows[:limit], len(rows) > limit


def event_body(event_id: str, event_type: str, created_at: datetime, job_id: str) -> str:
    """OpenAI's webhook event object, serialized once: every attempt sends (and signs) these bytes."""
    payload: dict[str, Any] = {
        "object": "event",
        "id": event_id,
        "type": event_type,
        "created_at": unix(created_at),
        "data": {"id": job_id},
    }
    return json.dumps(payload, separators=(",", ":"))


def emit(session: Session, job: Job, event_type: str, *, dedupe_key: str | None = None) -> str | None:
    """Write ``event_type`` for ``job`` to every endpoint of its organization that subscribed to it.

    Returns the event id, or None when no endpoint wants it or ``dedupe_key`` (default: the event type, so
    each type is sent once per job) was already used for this job. Does not commit: the caller's
    transaction does, and only then are the deliveries enqueued.
    """
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown webhook event type {event_type!r}; known: {EVENT_TYPES}")
    key = dedupe_key or event_type
    endpoints = [e for e in list_endpoints(session, org_id=job.org_id) if event_type in e.events]
    if not endpoints:
        return None
    seen = session.scalar(
        select(WebhookEvent.id).where(WebhookEvent.job_id == job.id, WebhookEvent.dedupe_key == key)
    )
    if seen is not None:
        return None
    now = utcnow()
    event_id = new_id("evt_")
    row = WebhookEvent(
        id=event_id,
        org_id=job.org_id,
        job_id=job.id,
        type=event_type,
        body=event_body(event_id, event_type, now, job.id),
        dedupe_key=key,
        created_at=now,
    )
    deliveries = [
        WebhookDelivery(event_id=event_id, endpoint_id=e.id, next_attempt_at=now, enqueued_at=now)
        for e in endpoints
    ]
    try:
        with session.begin_nested():  # a concurrent emit of the same key wins; this one writes nothing
            session.add(row)
            session.flush()
            session.add_all(deliveries)
            session.flush()
    except IntegrityError:
        log.info("job %s: webhook event %s (%s) already written", job.id, event_type, key)
        return None
    session.info.setdefault(_NEW_DELIVERIES, []).extend(d.id for d in deliveries)
    return event_id


def emit_status(session: Session, job: Job, status: str) -> str | None:
    """The event of a job reaching ``succeeded``/``failed``/``cancelled`` (called by ``transition``)."""
    event_type = STATUS_EVENTS.get(status)
    return None if event_type is None else emit(session, job, event_type)


@event.listens_for(Session, "after_commit")
def _enqueue_committed(session: Session) -> None:
    for delivery_id in session.info.pop(_NEW_DELIVERIES, []):
        try:
            queue.enqueue(queue.DELIVER_WEBHOOK, delivery_id)
        except Exception as exc:  # the broker is away; the commit stands and the periodic sweep sends it
            log.warning(
                "could not enqueue webhook delivery %s (%s); the sweep will send it", delivery_id, exc
            )


@event.listens_for(Session, "after_rollback")
def _forget_rolled_back(session: Session) -> None:
    session.info.pop(_NEW_DELIVERIES, None)
