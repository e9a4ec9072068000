"""Webhooks: an organization's endpoints, and the outbox of job events they receive.

Endpoints are managed as the openai SDK's ``client.webhooks`` manages them (``api/routes/webhooks.py``):
a name, the event types, a signing secret shown once (at creation and at each rotation), ``updated_at``
advanced by a change of configuration or secret. Every registration and every change of URL goes through
``check_target`` here, whichever door it came in by (the API, the moderator console's "add webhook"): a URL
pointing inside the provider's network (``tunegate/netguard.py``) is refused unless
``Settings.webhook_allowed_targets`` allows it; delivery checks again, on the addresses it connects to.

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
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models.base import new_id, unix, utcnow
from models.tables import Job, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tunegate import netguard, queue
from tunegate.errors import InvalidRequest, NotFound
from tunegate.jsontypes import JsonObject
from tunegate.settings import Settings, get_settings
from tunegate.webhook_send import Message

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
MAX_NAME_CHARS = 256
ROTATION_GRACE = timedelta(hours=24)  # rotate_secret(keep_old_secret_active_for_24_hours=True)
REGISTRATION_DNS_TIMEOUT_S = 2.0  # an unanswered lookup lets the URL through: delivery checks it again
SAMPLE_JOB_ID = "ftjob-test"  # the job a test delivery's event names
_NEW_DELIVERIES = "tunegate_webhook_deliveries"  # session.info key: ids to enqueue after commit


def new_secret() -> str:
    """A signing secret in the Standard Webhooks format the openai SDK decodes: ``whsec_<base64>``."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_hint(secret: str) -> str:
    """What the API shows of a secret after its one showing: ``whsec_...`` and its last four characters."""
    return f"whsec_...{secret[-4:]}"


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


def check_target(url: str, settings: Settings | None = None) -> None:
    """The address policy of registration (``netguard.AddressRefused``, a 400 naming ``url``): the URL's
    host, in any reading, must be public or allowed by ``Settings.webhook_allowed_targets``, and so must the
    addresses its name resolves to (a lookup unanswered within ``REGISTRATION_DNS_TIMEOUT_S`` lets it
    through: delivery resolves and checks again)."""
    allow = netguard.Allowlist.parse((settings or get_settings()).webhook_allowed_targets)
    netguard.check_url(url, allow, netguard.bounded(netguard.system_resolver, REGISTRATION_DNS_TIMEOUT_S))


def check_events(events: list[str] | None, *, param: str = "events") -> list[str]:
    """The requested event types, deduplicated in order, or ``InvalidRequest`` naming ``param``."""
    if not events:
        raise InvalidRequest(
            f"'{param}' must list at least one event type: {', '.join(EVENT_TYPES)}", param=param
        )
    unknown = [e for e in events if e not in EVENT_TYPES]
    if unknown:
        raise InvalidRequest(
            f"'{param}' holds unknown event types {unknown[:5]}; known: {', '.join(EVENT_TYPES)}",
            param=param,
            code="invalid_event_type",
        )
    return list(dict.fromkeys(events))


def check_name(name: str | None) -> str:
    """A human-readable name: 1 to ``MAX_NAME_CHARS`` printable characters, or ``InvalidRequest``."""
    if name is None:
        raise InvalidRequest("'name' is required: a human-readable name for the endpoint", param="name")
    stripped = name.strip()
    if not stripped:
        raise InvalidRequest("'name' must not be empty", param="name", code="invalid_name")
    if len(stripped) > MAX_NAME_CHARS:
        raise InvalidRequest(
            f"'name' is longer than {MAX_NAME_CHARS} characters", param="name", code="invalid_name"
        )
    if not stripped.isprintable():
        raise InvalidRequest("'name' holds control characters", param="name", code="invalid_name")
    return stripped


def display_name(row: WebhookEndpoint) -> str:
    """The endpoint's name; one registered without a name (the /v1/webhooks alias, the console) is shown
    under its URL's host."""
    if row.name:
        return row.name
    try:
        host = urlsplit(row.url).hostname
    except ValueError:
        host = None
    return (host or row.url)[:MAX_NAME_CHARS]


def create_endpoint(
    session: Session,
    *,
    org_id: str,
    url: str | None,
    events: list[str] | None,
    name: str | None = None,
    name_required: bool = False,
    events_param: str = "events",
    settings: Settings | None = None,
) -> WebhookEndpoint:
    """Validate and add an endpoint with a fresh secret (the caller commits and shows the secret once).

    Every way of registering one comes here: the URL must pass ``check_target`` (the address policy).
    ``name`` None (unless ``name_required``): the endpoint is shown under its URL's host. ``events_param``
    names the request's field of the event types (``events`` on /v1/webhooks, ``event_types`` for the SDK).
    """
    url = check_url(url)
    row = WebhookEndpoint(
        org_id=org_id,
        url=url,
        events=check_events(events, param=events_param),
        secret=new_secret(),
        name=check_name(name) if name is not None or name_required else None,
    )
    count = len(list_endpoints(session, org_id=org_id))
    if count >= MAX_ENDPOINTS:
        raise InvalidRequest(
            f"the organization already has {count} webhook endpoints, the most allowed; delete one first",
            code="too_many_webhooks",
        )
    check_target(url, settings)  # last: it may ask DNS
    row.created_at = row.updated_at = utcnow()
    session.add(row)
    session.flush()
    return row


def update_endpoint(
    session: Session,
    *,
    org_id: str,
    endpoint_id: str,
    url: str | None = None,
    events: list[str] | None = None,
    name: str | None = None,
    settings: Settings | None = None,
) -> WebhookEndpoint:
    """Change what is given (None: unchanged); a new URL passes ``check_target`` like a registration.
    ``updated_at`` moves only when something actually changed."""
    row = get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    changes: dict[str, list[str] | str] = {}
    if events is not None:
        changes["events"] = check_events(events, param="event_types")
    if name is not None:
        changes["name"] = check_name(name)
    if url is not None:
        new_url = check_url(url)
        if new_url != row.url:
            check_target(new_url, settings)
        changes["url"] = new_url
    changed = {k: v for k, v in changes.items() if getattr(row, k) != v}
    if changed:
        for k, v in changed.items():
            setattr(row, k, v)
        row.updated_at = utcnow()
        session.flush()
    return row


def rotate_secret(
    session: Session, *, org_id: str, endpoint_id: str, keep_old: bool, now: datetime | None = None
) -> WebhookEndpoint:
    """A new signing secret (the caller shows it once). ``keep_old``: deliveries are also signed with the
    secret it replaces for ``ROTATION_GRACE`` (24 hours), so receivers can switch over; otherwise the old
    secret, and any one kept by an earlier rotation, stops at once."""
    now = now or utcnow()
    row = get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    row.previous_secret = row.secret if keep_old else None
    row.previous_secret_expires_at = now + ROTATION_GRACE if keep_old else None
    row.secret = new_secret()
    row.updated_at = now
    session.flush()
    return row


def signing_secrets(row: WebhookEndpoint, now: datetime | None = None) -> tuple[str, ...]:
    """The secrets a message to ``row`` is signed with: its secret, and the rotated-out one while valid."""
    now = now or utcnow()
    expires = row.previous_secret_expires_at
    if row.previous_secret and expires is not None and expires > now:
        return (row.secret, row.previous_secret)
    return (row.secret,)


def list_endpoints(session: Session, *, org_id: str) -> list[WebhookEndpoint]:
    """Newest first."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    return list(session.scalars(stmt.order_by(WebhookEndpoint.id.desc())))


def page_endpoints(
    session: Session, *, org_id: str, after: str | None, limit: int
) -> tuple[list[WebhookEndpoint], bool]:
    """One page, newest first; ``after`` is the last endpoint id the client saw (ids sort by creation)."""
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.org_id == org_id)
    if after:
        stmt = stmt.where(WebhookEndpoint.id < after)
    rows = list(session.scalars(stmt.order_by(WebhookEndpoint.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


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


def sample_event_type(row: WebhookEndpoint, event_type: str | None) -> str:
    """The type of a test event: the one asked for (``InvalidRequest`` naming ``event_type`` for a type
    tunegate does not send), else the endpoint's first."""
    if event_type is None:
        return row.events[0] if row.events else STATUS_EVENTS["succeeded"]
    if event_type not in EVENT_TYPES:
        raise InvalidRequest(
            f"'event_type' {event_type[:100]!r} is not an event type tunegate sends; known: "
            f"{', '.join(EVENT_TYPES)}",
            param="event_type",
            code="invalid_event_type",
        )
    return event_type


def sample_message(row: WebhookEndpoint, event_type: str) -> Message:
    """A sample ``event_type`` event for ``row``, signed as a real one (its job is ``SAMPLE_JOB_ID``), with
    a fresh event id; nothing is stored."""
    event_id = new_id("evt_")
    return Message(
        url=row.url,
        secrets=signing_secrets(row),
        event_id=event_id,
        body=event_body(event_id, event_type, utcnow(), SAMPLE_JOB_ID),
    )


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
    payload: JsonObject = {
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
