"""Reads for the operator console: the outbound webhook delivery log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select

from portal.db import db
from portal.models import ApiKey, Order, WebhookDelivery, WebhookEndpoint


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    event_id: str
    event_type: str
    state: str  # pending | delivered | failed
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    endpoint_url: str
    api_key_prefix: str
    api_key_name: str
    order_reference: str | None


def recent_deliveries(
    limit: int = 50, *, state: str | None = None, order_reference: str | None = None
) -> list[DeliveryRow]:
    """Newest first; optionally only one state (e.g. "failed") or one order's deliveries."""
    query = (
        select(WebhookDelivery, WebhookEndpoint.url, ApiKey.prefix, ApiKey.name, Order.reference)
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(ApiKey, ApiKey.id == WebhookEndpoint.api_key_id)
        .outerjoin(Order, Order.id == WebhookDelivery.order_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(max(1, min(limit, 500)))
    )
    if state:
        query = query.where(WebhookDelivery.state == state)
    if order_reference:
        query = query.where(Order.reference == order_reference)
    with db.reader() as session:
        rows = session.execute(query).all()
    return [
        DeliveryRow(
            id=delivery.id,
            event_id=delivery.event_id,
            event_type=delivery.event_type,
            state=delivery.state,
            attempts=delivery.attempts,
            last_status=delivery.last_status,
            last_error=delivery.last_error,
            created_at=delivery.created_at,
            delivered_at=delivery.delivered_at,
            endpoint_url=url,
            api_key_prefix=prefix,
            api_key_name=name,
            order_reference=reference,
        )
        for delivery, url, prefix, name, reference in rows
    ]
