"""Outbound webhooks to merchants: every order change a merchant's system must hear about, signed,
delivered from the job queue (one job per event and endpoint, retried with back-off), and logged.

Signature: `Portal-Signature: t={unix time},v1={hex HMAC-SHA256 of "{t}.{body}"}` with the
endpoint's secret; `Portal-Event-Id` lets the receiver drop a repeat. The body is fixed when the
event happens, so every retry sends (and signs) the same bytes. An operator can send a delivery
again from the console (`requeue_delivery`): the same row, body and event id, on the same job.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite

from portal import jobs, outbound
from portal.api.representation import serialize_order
from portal.config import Settings
from portal.db import db
from portal.http import HttpClient, UpstreamError
from portal.models import ApiKey, Order, WebhookDelivery, WebhookEndpoint, utcnow
from portal.orders import timeline
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.api.webhooks")

EVENT_TYPES = (
    "order.authorized",
    "order.paid",
    "order.captured",
    "order.cancelled",
    "order.expired",
    "order.refunded",
    "order.payment_failed",
    "order.disputed",
    "order.dispute_closed",
    "order.updated",
    "link.sent",
)
SIGNATURE_TOLERANCE_SECONDS = 300
USER_AGENT = "checkout-portal-webhooks/1"


def sign(secret: str, timestamp: int, body: str) -> str:
    digest = hmac.new(secret.encode(), f"{timestamp}.{body}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def verify(secret: str, header: str, body: str, *, now: float | None = None) -> bool:
    """What a receiver does (the README shows the same in a few lines)."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    now = time.time() if now is None else now
    if abs(now - timestamp) > SIGNATURE_TOLERANCE_SECONDS:
        return False
    expected = sign(secret, timestamp, body).split("v1=", 1)[1]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def job_key(event_id: str, endpoint_id: int) -> str:
    """The dedupe key of the job that delivers one event to one endpoint."""
    return f"webhook:{event_id}:{endpoint_id}"


def request_headers(secret: str, delivery: WebhookDelivery, timestamp: int) -> dict[str, str]:
    """What each attempt sends with the body: the signature is made afresh for `timestamp`."""
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Portal-Signature": sign(secret, timestamp, delivery.body),
        "Portal-Event-Id": delivery.event_id,
        "Portal-Event-Type": delivery.event_type,
    }


def event_id(order: Order, event_type: str, discriminator: str = "") -> str:
    """The same happening always gets the same id (a retried job never makes a second event)."""
    seed = f"{order.reference}:{event_type}:{discriminator}".encode()
    return "evt_" + hashlib.sha256(seed).hexdigest()[:32]


def emit(
    session,
    settings: Settings,
    order: Order,
    event_type: str,
    *,
    discriminator: str = "",
    extra: dict | None = None,
) -> str | None:
    """Queue `event_type` about `order` to each active endpoint of the order's key, inside the
    caller's transaction. Returns the event id (None when the order has no key)."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    if order.merchant_key_id is None:
        return None
    current = session.get(Order, order.id, populate_existing=True)
    key = session.get(ApiKey, order.merchant_key_id)
    livemode = bool(key and key.live)
    evt = event_id(order, event_type, discriminator)
    body = json.dumps(
        {
            "id": evt,
            "object": "event",
            "type": event_type,
            "created": int(time.time()),
            "livemode": livemode,
            "data": {
                "object": serialize_order(current, livemode=livemode, settings=settings),
                **(extra or {}),
            },
        },
        separators=(",", ":"),
        sort_keys=True,
    )
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.api_key_id == order.merchant_key_id, WebhookEndpoint.active.is_(True)
        )
    ).all()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    for endpoint in endpoints:
        session.execute(
            dialect.insert(WebhookDelivery)
            .values(
                event_id=evt,
                event_type=event_type,
                endpoint_id=endpoint.id,
                order_id=order.id,
                body=body,
                state="pending",
                attempts=0,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["event_id", "endpoint_id"])
        )
        jobs.enqueue(
            session,
            "webhook_delivery",
            job_key(evt, endpoint.id),
            order_id=order.id,
            payload={"event_id": evt, "endpoint_id": endpoint.id},
        )
    timeline.record(
        order.id,
        "note",
        f"merchant event {event_type} queued for {len(endpoints)} endpoint(s)",
        {"event": evt},
        session=session,
    )
    return evt


_http: dict[bool, HttpClient] = {}


def _client(settings) -> HttpClient:
    """One client per loopback policy, on portal.outbound's session: each delivery's address is
    resolved, checked and connected to as checked."""
    loopback_ok = outbound.allow_loopback(settings)
    if loopback_ok not in _http:
        _http[loopback_ok] = HttpClient(
            "merchant-webhook",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=min(settings.http_read_timeout, 15.0),
            session=outbound.guarded_session(loopback_ok),
        )
    return _http[loopback_ok]


def run_delivery(services, job) -> None:
    with db.reader() as session:
        delivery = session.scalar(
            select(WebhookDelivery).where(
                WebhookDelivery.event_id == job.payload["event_id"],
                WebhookDelivery.endpoint_id == job.payload["endpoint_id"],
            )
        )
        endpoint = session.get(WebhookEndpoint, job.payload["endpoint_id"])
    if delivery is None or endpoint is None or delivery.state == "delivered":
        return
    if not endpoint.active:
        _log_attempt(delivery, state="failed", error="endpoint disabled")
        return
    try:
        loopback_ok = outbound.allow_loopback(services.settings)
        check_url(endpoint.url, allow_http="loopback" if loopback_ok else "never")
    except UnsafeUrl as exc:  # registered before the portal checked URLs: never sent
        _log_attempt(delivery, error=f"endpoint URL refused: {exc}")
        raise UpstreamError(f"endpoint URL refused: {exc}", transient=False) from None
    headers = request_headers(endpoint.secret, delivery, int(time.time()))
    try:
        response = _client(services.settings).request(
            "POST",
            endpoint.url,
            data=delivery.body.encode(),
            headers=headers,
            order_id=delivery.order_id,
            allow_redirects=False,
        )
    except UpstreamError as exc:
        _log_attempt(delivery, error=str(exc))
        raise
    if 200 <= response.status_code < 300:
        _log_attempt(delivery, state="delivered", status=response.status_code)
        return
    _log_attempt(delivery, status=response.status_code, error=f"HTTP {response.status_code}")
    # Every non-2xx answer is retried: the merchant's receiver may be mid-deploy.
    raise UpstreamError(
        f"webhook {delivery.event_type} to {endpoint.url}: HTTP {response.status_code}",
        transient=True,
        status=response.status_code,
    )


def _log_attempt(delivery, *, state=None, status=None, error=None) -> None:
    values = {
        "attempts": WebhookDelivery.attempts + 1,
        "last_status": status,
        "last_error": error,
    }
    if state:
        values["state"] = state
    if state == "delivered":
        values["delivered_at"] = utcnow()
    with db.transaction() as session:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id == delivery.id).values(**values)
        )


def give_up_delivery(services, job, error: str) -> None:
    with db.transaction() as session:
        session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.event_id == job.payload["event_id"],
                WebhookDelivery.endpoint_id == job.payload["endpoint_id"],
                WebhookDelivery.state != "delivered",
            )
            .values(state="failed", last_error=error)
        )
    log.error("merchant webhook %s given up: %s", job.payload["event_id"], error)
    if job.order_id is not None:
        timeline.record(job.order_id, "alert", f"merchant webhook not delivered: {error}")


class RedeliveryRefused(Exception):
    """The delivery cannot be sent again now; the message says why, for the operator."""


def requeue_delivery(session, delivery_id: int) -> WebhookDelivery:
    """Queue a delivery to be sent again, inside the caller's transaction: the same row, body and
    event id (so the receiver can drop it if it has it already), a fresh set of attempts, and its
    job due now. Returns the delivery as it was before, for the audit trail.

    Refused when the endpoint is disabled (nothing would be sent) and while a worker is sending
    it (its outcome is about to land; the operator looks again in a moment)."""
    delivery = session.get(WebhookDelivery, delivery_id)
    if delivery is None:
        raise RedeliveryRefused("There is no such delivery.")
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None or not endpoint.active:
        raise RedeliveryRefused(
            "The endpoint is disabled (its API key was revoked), so nothing would be sent."
        )
    # Out of the session, so the updates below leave the "before" values on it as they were.
    session.expunge(delivery)
    key = job_key(delivery.event_id, delivery.endpoint_id)
    jobs.enqueue(
        session,
        "webhook_delivery",
        key,
        order_id=delivery.order_id,
        payload={"event_id": delivery.event_id, "endpoint_id": delivery.endpoint_id},
    )
    # A fresh delivery: a fresh set of attempts before it gives up.
    if not jobs.requeue(session, key):
        raise RedeliveryRefused(
            "A worker is sending this delivery right now: reload the page in a moment."
        )
    reset = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.id == delivery.id,
            WebhookDelivery.state == delivery.state,
            WebhookDelivery.attempts == delivery.attempts,
        )
        .values(state="pending", attempts=0, last_status=None, last_error=None, delivered_at=None)
    )
    if reset.rowcount != 1:
        raise RedeliveryRefused("The delivery changed meanwhile: reload the page and look again.")
    return delivery
