"""Webhook endpoints as the openai SDK's ``client.webhooks`` manages them, and the older ``/v1/webhooks``.

``/v1/webhook_endpoints`` (``create``, ``list``, ``retrieve``, ``update``, ``delete``, ``rotate_secret``,
``test``) and ``/v1/webhook_event_types`` (``client.webhooks.event_types.list``) answer the SDK's own objects.
The signing secret is answered by ``create`` and ``rotate_secret`` only; elsewhere a hint
(``whsec_...abcd``). ``test`` sends one signed sample event through the delivery path itself
(``tunegate.webhook_send.post``: the same address policy, signature and timeout) and answers the status the
receiver gave; nothing is stored. ``GET /v1/webhook_endpoints/{id}/deliveries`` (an extension) is the
endpoint's delivery log, each attempt shown only as a status class (``last_result``), never the receiver's
words.

``/v1/webhooks`` is the same service under its first shape (``events`` for ``event_types``, ``secret`` for
``signing_secret``, no name), kept as an alias for clients written before: every route of both is a thin
call of ``models/webhooks.py``. Every lookup is scoped to the caller's organization (another's id is a 404).
A URL that points inside the provider's network (``tunegate/netguard.py``) is a 400 naming ``url`` unless
``Settings.webhook_allowed_targets`` allows it; ``models.webhooks`` checks it for every registration (the
console's too) and the worker again, on the addresses it connects to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated
from weakref import WeakKeyDictionary

import anyio
from fastapi import APIRouter, Query

from api.deps import CurrentOrg, SessionDep, SettingsDep
from api.schemas import (
    ListOut,
    WebhookCreatedOut,
    WebhookCreateIn,
    WebhookDeletedOut,
    WebhookDeliveryOut,
    WebhookEndpointCreateIn,
    WebhookEndpointDeletedOut,
    WebhookEndpointOut,
    WebhookEndpointTestOut,
    WebhookEndpointUpdateIn,
    WebhookEndpointWithSecretOut,
    WebhookEventTypesOut,
    WebhookOut,
    WebhookRotateSecretIn,
    WebhookTestIn,
)
from api.services.views import delivery_out, webhook_created_out, webhook_out
from models import webhooks
from models.base import unix
from models.db import new_session
from models.tables import WebhookEndpoint
from tunegate import netguard, webhook_send
from tunegate.errors import Unprocessable

log = logging.getLogger(__name__)

Limit = Annotated[int, Query(ge=1, le=100)]
# test deliveries in flight at once (each may wait Settings.webhook_timeout_s for its receiver): they do not
# take every thread of the pool the synchronous routes need
MAX_CONCURRENT_TESTS = 4
_TEST_LIMITERS: WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = WeakKeyDictionary()

endpoints = APIRouter(prefix="/v1/webhook_endpoints", tags=["webhooks"])
event_types = APIRouter(prefix="/v1/webhook_event_types", tags=["webhooks"])
legacy = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])
router = APIRouter()  # api/main.py includes this one: all three


def endpoint_out(row: WebhookEndpoint) -> WebhookEndpointOut:
    return WebhookEndpointOut(
        id=row.id,
        name=webhooks.display_name(row),
        url=row.url,
        event_types=list(row.events),
        signing_secret_hint=webhooks.secret_hint(row.secret),
        created_at=unix(row.created_at) or 0,
        updated_at=unix(row.updated_at or row.created_at),
    )


def endpoint_with_secret_out(row: WebhookEndpoint) -> WebhookEndpointWithSecretOut:
    """The only answer that carries the signing secret (create, rotate_secret)."""
    return WebhookEndpointWithSecretOut(**endpoint_out(row).model_dump(), signing_secret=row.secret)


def _deliveries(
    session: SessionDep, org_id: str, endpoint_id: str, after: str | None, limit: int
) -> ListOut[WebhookDeliveryOut]:
    endpoint = webhooks.get_endpoint(session, org_id=org_id, endpoint_id=endpoint_id)
    rows, more = webhooks.list_deliveries(session, endpoint=endpoint, after=after, limit=limit)
    return ListOut[WebhookDeliveryOut].page([delivery_out(d, e) for d, e in rows], more)


# --- /v1/webhook_endpoints: the openai SDK's client.webhooks ----------------------------------------------
@endpoints.post("", response_model=WebhookEndpointWithSecretOut)
def create_endpoint(
    body: WebhookEndpointCreateIn, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> WebhookEndpointWithSecretOut:
    row = webhooks.create_endpoint(
        session,
        org_id=org.id,
        url=body.url,
        events=body.event_types,
        name=body.name,
        name_required=True,
        events_param="event_types",
        settings=settings,
    )
    session.commit()
    return endpoint_with_secret_out(row)


@endpoints.get("", response_model=ListOut[WebhookEndpointOut])
def list_endpoints(
    org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListOut[WebhookEndpointOut]:
    rows, more = webhooks.page_endpoints(session, org_id=org.id, after=after, limit=limit)
    return ListOut[WebhookEndpointOut].page([endpoint_out(r) for r in rows], more)


@endpoints.get("/{webhook_id}", response_model=WebhookEndpointOut)
def retrieve_endpoint(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookEndpointOut:
    return endpoint_out(webhooks.get_endpoint(session, org_id=org.id, endpoint_id=webhook_id))


@endpoints.post("/{webhook_id}", response_model=WebhookEndpointOut)
def update_endpoint(
    webhook_id: str,
    body: WebhookEndpointUpdateIn,
    org: CurrentOrg,
    session: SessionDep,
    settings: SettingsDep,
) -> WebhookEndpointOut:
    row = webhooks.update_endpoint(
        session,
        org_id=org.id,
        endpoint_id=webhook_id,
        url=body.url,
        events=body.event_types,
        name=body.name,
        settings=settings,
    )
    session.commit()
    return endpoint_out(row)


@endpoints.delete("/{webhook_id}", response_model=WebhookEndpointDeletedOut)
def delete_endpoint(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookEndpointDeletedOut:
    webhooks.delete_endpoint(session, org_id=org.id, endpoint_id=webhook_id)
    session.commit()
    return WebhookEndpointDeletedOut(id=webhook_id, deleted=True)


@endpoints.post("/{webhook_id}/rotate_secret", response_model=WebhookEndpointWithSecretOut)
def rotate_secret(
    webhook_id: str, org: CurrentOrg, session: SessionDep, body: WebhookRotateSecretIn | None = None
) -> WebhookEndpointWithSecretOut:
    keep = body.keep_old_secret_active_for_24_hours if body is not None else False
    row = webhooks.rotate_secret(session, org_id=org.id, endpoint_id=webhook_id, keep_old=keep)
    session.commit()
    return endpoint_with_secret_out(row)


def _sample(org_id: str, webhook_id: str, requested: str | None) -> tuple[str, webhook_send.Message]:
    """The test event's type and message, read in a short session of its own (closed before sending)."""
    session = new_session(readonly=True)
    try:
        row = webhooks.get_endpoint(session, org_id=org_id, endpoint_id=webhook_id)
        event_type = webhooks.sample_event_type(row, requested)
        return event_type, webhooks.sample_message(row, event_type)
    finally:
        session.close()


def _test_limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _TEST_LIMITERS.get(loop)
    if limiter is None:
        limiter = _TEST_LIMITERS[loop] = anyio.CapacityLimiter(MAX_CONCURRENT_TESTS)
    return limiter


@endpoints.post("/{webhook_id}/test", response_model=WebhookEndpointTestOut)
async def send_test(
    webhook_id: str, org: CurrentOrg, settings: SettingsDep, body: WebhookTestIn | None = None
) -> WebhookEndpointTestOut:
    """One signed sample event, sent now; answers the receiver's status. The endpoint is read first; no
    session is held while the event is sent (up to ``Settings.webhook_timeout_s``), in a worker thread of
    its own, at most ``MAX_CONCURRENT_TESTS`` at once (more wait their turn on the event loop)."""
    requested = body.event_type if body is not None else None
    event_type, message = await anyio.to_thread.run_sync(_sample, org.id, webhook_id, requested)
    result = await anyio.to_thread.run_sync(webhook_send.post, message, settings, limiter=_test_limiter())
    log.info(
        "webhook test %s (event %s) to %s: %s %s",
        webhook_id,
        message.event_id,
        message.url[:200],
        result.shown,
        result.error or "",
    )
    if result.status_code is None:  # nothing answered: the receiver's words stay in this server's log
        if result.shown == "refused_by_policy":
            raise netguard.AddressRefused(
                "'url' cannot be used for webhooks: its host is, or resolves to, an address webhooks may not "
                "reach; nothing was sent (the provider may allow it: "
                f"{netguard.SETTING})"
            )
        raise Unprocessable(
            "the test event got no answer from the endpoint's URL (connection_failed: its host did not "
            f"resolve, refused the connection or did not answer within {settings.webhook_timeout_s:g} s)",
            param="url",
            code="webhook_endpoint_unreachable",
        )
    return WebhookEndpointTestOut(
        webhook_endpoint_id=webhook_id, event_type=event_type, status_code=result.status_code
    )


@endpoints.get("/{webhook_id}/deliveries", response_model=ListOut[WebhookDeliveryOut])
def list_endpoint_deliveries(
    webhook_id: str, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListOut[WebhookDeliveryOut]:
    """The endpoint's delivery log, newest first (an extension: the SDK has no call for it)."""
    return _deliveries(session, org.id, webhook_id, after, limit)


@event_types.get("", response_model=WebhookEventTypesOut)
def list_event_types(org: CurrentOrg) -> WebhookEventTypesOut:
    """``client.webhooks.event_types.list()``: the event types tunegate sends."""
    del org  # authenticated like every /v1 call
    return WebhookEventTypesOut(data=list(webhooks.EVENT_TYPES))


# --- /v1/webhooks: the first shape, an alias of the same service --------------------------------------------
@legacy.post("", response_model=WebhookCreatedOut)
def create_webhook(
    body: WebhookCreateIn, org: CurrentOrg, session: SessionDep, settings: SettingsDep
) -> WebhookCreatedOut:
    row = webhooks.create_endpoint(
        session, org_id=org.id, url=body.url, events=body.events, settings=settings
    )
    session.commit()
    return webhook_created_out(row)


@legacy.get("", response_model=ListOut[WebhookOut])
def list_webhooks(org: CurrentOrg, session: SessionDep) -> ListOut[WebhookOut]:
    data = [webhook_out(r) for r in webhooks.list_endpoints(session, org_id=org.id)]
    return ListOut[WebhookOut].page(data, False)


@legacy.get("/{webhook_id}", response_model=WebhookOut)
def retrieve_webhook(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookOut:
    return webhook_out(webhooks.get_endpoint(session, org_id=org.id, endpoint_id=webhook_id))


@legacy.delete("/{webhook_id}", response_model=WebhookDeletedOut)
def delete_webhook(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookDeletedOut:
    webhooks.delete_endpoint(session, org_id=org.id, endpoint_id=webhook_id)
    session.commit()
    return WebhookDeletedOut(id=webhook_id, deleted=True)


@legacy.get("/{webhook_id}/deliveries", response_model=ListOut[WebhookDeliveryOut])
def list_deliveries(
    webhook_id: str, org: CurrentOrg, session: SessionDep, after: str | None = None, limit: Limit = 20
) -> ListOut[WebhookDeliveryOut]:
    return _deliveries(session, org.id, webhook_id, after, limit)


for _sub in (endpoints, event_types, legacy):
    router.include_router(_sub)
