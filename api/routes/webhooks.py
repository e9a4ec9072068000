"""/v1/webhooks (an extension): an organization's endpoints for job events, and each one's delivery log.

The signing secret is answered once, by ``POST``; events are written and sent by ``models/webhooks.py`` and
``worker/webhooks.py``. Every lookup is scoped to the caller's organization (another's id is a 404).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CurrentOrg, SessionDep
from api.schemas import (
    ListOut,
    WebhookCreatedOut,
    WebhookCreateIn,
    WebhookDeletedOut,
    WebhookDeliveryOut,
    WebhookOut,
)
from api.views import delivery_out, webhook_created_out, webhook_out
from models import webhooks

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("", response_model=WebhookCreatedOut)
def create_webhook(body: WebhookCreateIn, org: CurrentOrg, session: SessionDep) -> WebhookCreatedOut:
    row = webhooks.create_endpoint(session, org_id=org.id, url=body.url, events=body.events)
    session.commit()
    return webhook_created_out(row)


@router.get("", response_model=ListOut[WebhookOut])
def list_webhooks(org: CurrentOrg, session: SessionDep) -> ListOut[WebhookOut]:
    data = [webhook_out(r) for r in webhooks.list_endpoints(session, org_id=org.id)]
    return ListOut[WebhookOut].page(data, False)


@router.get("/{webhook_id}", response_model=WebhookOut)
def retrieve_webhook(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookOut:
    return webhook_out(webhooks.get_endpoint(session, org_id=org.id, endpoint_id=webhook_id))


@router.delete("/{webhook_id}", response_model=WebhookDeletedOut)
def delete_webhook(webhook_id: str, org: CurrentOrg, session: SessionDep) -> WebhookDeletedOut:
    webhooks.delete_endpoint(session, org_id=org.id, endpoint_id=webhook_id)
    session.commit()
    return WebhookDeletedOut(id=webhook_id, deleted=True)


@router.get("/{webhook_id}/deliveries", response_model=ListOut[WebhookDeliveryOut])
def list_deliveries(
    webhook_id: str,
    org: CurrentOrg,
    session: SessionDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListOut[WebhookDeliveryOut]:
    endpoint = webhooks.get_endpoint(session, org_id=org.id, endpoint_id=webhook_id)
    rows, more = webhooks.list_deliveries(session, endpoint=endpoint, after=after, limit=limit)
    return ListOut[WebhookDeliveryOut].page([delivery_out(d, e) for d, e in rows], more)
