"""Reads for the operator console: the outbound webhook delivery log (the list with its filters,
one delivery with what it sends, an order's deliveries).

Nothing here returns an endpoint's signing secret. Endpoint URLs and errors are shown with
credentials in the URL (user info, `?token=`-style query values) redacted, like every logged call.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select

from portal.api import webhooks_out
from portal.db import db
from portal.http import redact_url
from portal.models import ApiKey, Job, JobState, Order, WebhookDelivery, WebhookEndpoint

# The states the console shows: `pending` is split by whether an attempt has been made yet.
STATES = ("pending", "retrying", "delivered", "failed")
LARGEST_ID = 2**31 - 1  # the id columns are 32-bit integers on PostgreSQL


@dataclass(frozen=True)
class DeliveryRow:
    id: int
    event_id: str
    event_type: str
    state: str  # as stored: pending | delivered | failed
    attempts: int
    last_status: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    endpoint_url: str  # redacted
    api_key_prefix: str
    api_key_name: str
    order_reference: str | None
    endpoint_id: int
    endpoint_active: bool
    api_key_id: int
    api_key_revoked: bool
    order_id: int | None
    job_state: str | None  # the delivery job's state: queued | done | dead
    job_running: bool  # a worker holds the job right now
    next_attempt_at: datetime | None  # when the queue sends it next, while it waits

    @property
    def display_state(self) -> str:
        """pending (not tried yet), retrying (tried, failed, waiting for its next attempt),
        delivered, or failed (given up)."""
        if self.state == "pending" and self.attempts > 0:
            return "retrying"
        return self.state


@dataclass(frozen=True)
class DeliveryFilters:
    state: str | None = None  # one of STATES
    order_reference: str | None = None
    api_key_id: int | None = None
    endpoint_id: int | None = None
    event_type: str | None = None
    event_id: str | None = None

    def conditions(self) -> list:
        where = []
        if self.state == "pending":
            where += [WebhookDelivery.state == "pending", WebhookDelivery.attempts == 0]
        elif self.state == "retrying":
            where += [WebhookDelivery.state == "pending", WebhookDelivery.attempts > 0]
        elif self.state:
            where.append(WebhookDelivery.state == self.state)
        if self.order_reference:
            where.append(Order.reference == self.order_reference.strip())
        if self.api_key_id is not None:
            where.append(WebhookEndpoint.api_key_id == self.api_key_id)
        if self.endpoint_id is not None:
            where.append(WebhookDelivery.endpoint_id == self.endpoint_id)
        if self.event_type:
            where.append(WebhookDelivery.event_type == self.event_type)
        if self.event_id:
            where.append(WebhookDelivery.event_id == self.event_id.strip())
        return where


def _query():
    # Named columns only: the endpoint's secret is never read for a listing.
    return (
        select(
            WebhookDelivery.id,
            WebhookDelivery.event_id,
            WebhookDelivery.event_type,
            WebhookDelivery.state,
            WebhookDelivery.attempts,
            WebhookDelivery.last_status,
            WebhookDelivery.last_error,
            WebhookDelivery.created_at,
            WebhookDelivery.delivered_at,
            WebhookDelivery.endpoint_id,
            WebhookDelivery.order_id,
            WebhookEndpoint.url,
            WebhookEndpoint.active,
            ApiKey.id.label("api_key_id"),
            ApiKey.prefix,
            ApiKey.name,
            ApiKey.revoked_at,
            Order.reference,
        )
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .join(ApiKey, ApiKey.id == WebhookEndpoint.api_key_id)
        .outerjoin(Order, Order.id == WebhookDelivery.order_id)
    )


def _redacted_error(error: str | None, url: str) -> str | None:
    # A given-up delivery's error names the endpoint URL ("webhook order.paid to https://...").
    return error.replace(url, redact_url(url)) if error else error


def _rows(session, query) -> list[DeliveryRow]:
    found = session.execute(query).all()
    keys = {webhooks_out.job_key(r.event_id, r.endpoint_id): r.id for r in found}
    job_of: dict[int, Job] = {}
    if keys:
        for job in session.scalars(select(Job).where(Job.dedupe_key.in_(list(keys)))):
            job_of[keys[job.dedupe_key]] = job
    rows = []
    for r in found:
        job = job_of.get(r.id)
        waiting = job is not None and job.state == JobState.QUEUED
        rows.append(
            DeliveryRow(
                id=r.id,
                event_id=r.event_id,
                event_type=r.event_type,
                state=r.state,
                attempts=r.attempts,
                last_status=r.last_status,
                last_error=_redacted_error(r.last_error, r.url),
                created_at=r.created_at,
                delivered_at=r.delivered_at,
                endpoint_url=redact_url(r.url),
                api_key_prefix=r.prefix,
                api_key_name=r.name,
                order_reference=r.reference,
                endpoint_id=r.endpoint_id,
                endpoint_active=r.active,
                api_key_id=r.api_key_id,
                api_key_revoked=r.revoked_at is not None,
                order_id=r.order_id,
                job_state=job.state if job is not None else None,
                job_running=waiting and job.locked_by is not None,
                next_attempt_at=job.run_at if waiting and r.state == "pending" else None,
            )
        )
    return rows


def _newest_first(query):
    return query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())


def count_deliveries(filters: DeliveryFilters) -> int:
    query = (
        select(func.count(WebhookDelivery.id))
        .join(WebhookEndpoint, WebhookEndpoint.id == WebhookDelivery.endpoint_id)
        .outerjoin(Order, Order.id == WebhookDelivery.order_id)
        .where(*filters.conditions())
    )
    with db.reader() as session:
        return session.scalar(query) or 0


def list_deliveries(filters: DeliveryFilters, limit: int, offset: int = 0) -> list[DeliveryRow]:
    """Newest first."""
    query = _newest_first(_query().where(*filters.conditions()))
    with db.reader() as session:
        return _rows(session, query.limit(max(1, min(limit, 500))).offset(max(offset, 0)))


def recent_deliveries(
    limit: int = 50, *, state: str | None = None, order_reference: str | None = None
) -> list[DeliveryRow]:
    """Newest first; optionally only one state (e.g. "failed", see STATES) or one order's."""
    return list_deliveries(DeliveryFilters(state=state, order_reference=order_reference), limit)


def deliveries_for_order(order_id: int, limit: int = 100) -> list[DeliveryRow]:
    query = _newest_first(_query().where(WebhookDelivery.order_id == order_id))
    with db.reader() as session:
        return _rows(session, query.limit(limit))


@dataclass(frozen=True)
class DeliveryDetail:
    row: DeliveryRow
    body: str  # the exact bytes sent and signed
    payload: str  # the same, pretty-printed for reading
    headers: list[tuple[str, str]]  # as an attempt made now would send them
    signed_at: int  # the timestamp in that example signature
    job_attempts: int | None
    job_last_error: str | None

    @property
    def signed_at_time(self) -> datetime:
        return datetime.fromtimestamp(self.signed_at, UTC)


def delivery_detail(delivery_id: int, *, now: int | None = None) -> DeliveryDetail | None:
    """One delivery with its payload and the headers each attempt sends. The signature shown is
    made for `now` (each attempt signs with its own time); the secret itself stays here."""
    if not 0 < delivery_id <= LARGEST_ID:
        return None
    with db.reader() as session:
        rows = _rows(session, _query().where(WebhookDelivery.id == delivery_id))
        if not rows:
            return None
        delivery = session.get(WebhookDelivery, delivery_id)
        secret, url = session.execute(
            select(WebhookEndpoint.secret, WebhookEndpoint.url).where(
                WebhookEndpoint.id == delivery.endpoint_id
            )
        ).one()
        job = session.scalar(
            select(Job).where(
                Job.dedupe_key == webhooks_out.job_key(delivery.event_id, delivery.endpoint_id)
            )
        )
    signed_at = int(time.time()) if now is None else now
    headers = webhooks_out.request_headers(secret, delivery, signed_at)
    try:
        payload = json.dumps(
            json.loads(delivery.body), indent=2, sort_keys=True, ensure_ascii=False
        )
    except ValueError:
        payload = delivery.body
    return DeliveryDetail(
        row=rows[0],
        body=delivery.body,
        payload=payload,
        headers=list(headers.items()),
        signed_at=signed_at,
        job_attempts=job.attempts if job is not None else None,
        job_last_error=_redacted_error(job.last_error, url) if job is not None else None,
    )


@dataclass(frozen=True)
class EndpointChoice:
    id: int
    url: str  # redacted
    active: bool
    api_key_id: int
    api_key_prefix: str
    api_key_name: str
    api_key_revoked: bool


def endpoints() -> list[EndpointChoice]:
    """Every webhook endpoint with its key, for the console's filters."""
    query = (
        select(
            WebhookEndpoint.id,
            WebhookEndpoint.url,
            WebhookEndpoint.active,
            ApiKey.id.label("api_key_id"),
            ApiKey.prefix,
            ApiKey.name,
            ApiKey.revoked_at,
        )
        .join(ApiKey, ApiKey.id == WebhookEndpoint.api_key_id)
        .order_by(ApiKey.name, ApiKey.prefix, WebhookEndpoint.id)
    )
    with db.reader() as session:
        return [
            EndpointChoice(
                id=r.id,
                url=redact_url(r.url),
                active=r.active,
                api_key_id=r.api_key_id,
                api_key_prefix=r.prefix,
                api_key_name=r.name,
                api_key_revoked=r.revoked_at is not None,
            )
            for r in session.execute(query).all()
        ]
