"""`POST /webhooks/stripe`: signature and timestamp first, then each event id once.

The handler re-fetches the Checkout Session from Stripe (an event body is only a hint) and calls
the same `sync_session` as the return page; the platform call itself runs as a job, so Stripe gets
its answer quickly. Database trouble answers 503 so that Stripe delivers again later.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import stripe
from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import bindparam, insert, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portal import checkout, disputes, jsonlimits, orders, recovery, refunds
from portal.db import db
from portal.http import UpstreamError
from portal.models import Order, StripeEvent, utcnow
from portal.orders import timeline

log = logging.getLogger("portal.webhooks")
bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")

TOLERANCE_SECONDS = 300
# Locked (SQLite), down or unreachable, or every pooled connection busy: Stripe should try again.
DATABASE_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeoutError)
SESSION_EVENTS = {
    "checkout.session.completed",
    "checkout.session.async_payment_succeeded",
    "checkout.session.async_payment_failed",
    "checkout.session.expired",
}
DISPUTE_EVENTS = {"charge.dispute.created", "charge.dispute.closed"}
HANDLED = SESSION_EVENTS | DISPUTE_EVENTS | {"charge.refunded"}
# Refunds that moved money (or are about to): a failed or cancelled one gave nothing back.
COUNTED_REFUNDS = {"succeeded", "pending", "requires_action"}


@dataclass(frozen=True)
class Event:
    """What the handler reads of a verified Stripe event: its id, its type and its
    `data.object`, as the JSON Stripe signed."""

    id: str
    type: str
    object: dict


def verify(payload: bytes, signature: str | None, secrets: tuple[str, ...]) -> Event | None:
    """The event if any configured secret (rotation: old and new) signed it, else None; a
    ValueError if the signed body is not an event. The SDK checks the signature and its
    timestamp; the body is read as plain JSON, not turned into the SDK's tree of
    `StripeObject`s, which the handler would only turn back into dicts (~300 µs an event, ten
    times the check and the parse together)."""
    if not signature or not timestamp_current(signature):
        return None
    text = payload.decode("utf-8")  # UnicodeDecodeError is a ValueError
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(text, signature, secret, TOLERANCE_SECONDS)
        except stripe.SignatureVerificationError:
            continue
        body = jsonlimits.loads(text)
        if not isinstance(body, dict) or not all(
            isinstance(body.get(name), str) for name in ("id", "type")
        ):
            raise ValueError("a signed body that is not a Stripe event")
        data = body.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise ValueError("a signed event without data.object")
        return Event(body["id"], body["type"], obj)
    return None


def timestamp_current(signature: str, now: float | None = None) -> bool:
    """Whether the `t=` of a `Stripe-Signature` header is within TOLERANCE_SECONDS of now, in
    EITHER direction. The SDK's check only refuses old timestamps; a signature dated in the
    future would stay replayable until that time comes, so it is refused here, first."""
    stamps = [part.strip()[2:] for part in signature.split(",") if part.strip().startswith("t=")]
    if len(stamps) != 1:
        return False
    text = stamps[0].strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        return False
    now = time.time() if now is None else now
    return abs(now - int(text)) <= TOLERANCE_SECONDS


# Built once: the webhook path runs these for every delivery.
_SEEN = select(StripeEvent.id).where(StripeEvent.id == bindparam("event_id"))
_REMEMBER = insert(StripeEvent)


def _seen(event_id: str) -> bool:
    with db.statements() as connection:
        return connection.execute(_SEEN, {"event_id": event_id}).first() is not None


def _remember(event, order_id: int | None) -> None:
    """One INSERT, committed as it runs (the event's effects are already committed)."""
    try:
        with db.statements() as connection:
            connection.execute(
                _REMEMBER,
                {"id": event.id, "type": event.type, "order_id": order_id, "received_at": utcnow()},
            )
    except IntegrityError:
        pass  # a concurrent delivery of the same event got there first


def _order_by_payment_intent(payment_intent: str | None) -> Order | None:
    if not payment_intent:
        return None
    return orders.find_for_payment_intent(payment_intent)


def handle_event(services, event) -> tuple[str, int | None]:
    """Apply one verified event; returns (what happened, order id)."""
    if event.type not in HANDLED:
        return "ignored: event type not handled", None
    obj = event.object
    if event.type in SESSION_EVENTS:
        # Ours? (The order row exists before its Checkout Session is created, so this holds even
        # while the order's own commit of the session id is still on its way.) Sessions of other
        # integrations on the same Stripe account are ignored without asking Stripe about them.
        if orders.find_for_session(obj) is None:
            return "ignored: not our session", None
        stripe_session = services.stripe.retrieve_session(obj["id"])
        order = None
        if event.type == "checkout.session.async_payment_failed":
            order = checkout.payment_failed(
                services, stripe_session, "The payment did not go through."
            )
        else:
            order = checkout.sync_session(services, stripe_session, source=f"webhook {event.type}")
        if order is None:
            return "ignored: not our session", None
        timeline.record(order.id, "webhook", event.type, {"event": event.id})
        if event.type == "checkout.session.expired":
            recovery.expired(services, order, stripe_session)
        return f"order {order.state}", order.id
    if event.type == "charge.refunded":
        order = _order_by_payment_intent(obj.get("payment_intent"))
        if order is None:
            return "ignored: not our charge", None
        # The event tells that refunds happened, not which (Stripe no longer embeds a charge's
        # refunds): ask Stripe for the payment's refunds and record each one not seen yet. A
        # refund made here (console, API) is already recorded, so it is not reported again.
        listed = services.stripe.list_refunds(order.stripe_payment_intent_id, order_id=order.id)
        captured = obj.get("amount_captured")
        charged = captured if captured is not None else obj.get("amount")
        new = []
        for stripe_refund in sorted(listed, key=lambda r: (r.get("created") or 0, r["id"])):
            if stripe_refund.get("status") not in COUNTED_REFUNDS:
                continue
            recorded = refunds.record(
                order.id,
                stripe_refund,
                source="stripe",
                charged=int(charged) if charged is not None else None,
            )
            if recorded.new:
                new.append(recorded)
        timeline.record(
            order.id,
            "webhook",
            event.type,
            {"event": event.id, "new_refunds": [r.refund_id for r in new]},
        )
        if not new:
            return "no change: every refund is already recorded", order.id
        return f"order {new[-1].state}", order.id
    if event.type in DISPUTE_EVENTS:
        order = _order_by_payment_intent(obj.get("payment_intent"))
        if order is None or not isinstance(obj.get("id"), str):
            return "ignored: not our charge", None
        timeline.record(order.id, "webhook", event.type, {"event": event.id})
        if event.type == "charge.dispute.created":
            return disputes.opened(order, obj, event.id), order.id
        return disputes.closed(order, obj, event.id), order.id
    return "ignored: event type not handled", None


@bp.post("/stripe")
def stripe_webhook():
    services = current_app.extensions["portal"]
    payload = request.get_data(cache=False)
    event = None
    try:
        event = verify(
            payload,
            request.headers.get("Stripe-Signature"),
            services.settings.stripe_webhook_secret,
        )
    except ValueError:
        event = None  # the signature matched but the body is not an event
    if event is None:
        log.warning("Stripe webhook refused: bad or stale signature")
        return jsonify(error={"code": "bad_signature", "message": "invalid signature"}), 400
    try:
        if _seen(event.id):
            return jsonify(received=True, duplicate=True)
        outcome, order_id = handle_event(services, event)
        _remember(event, order_id)
    except DATABASE_UNAVAILABLE:
        log.exception("Stripe webhook %s: database unavailable", event.id)
        return jsonify(error={"code": "unavailable", "message": "try again"}), 503
    except UpstreamError as exc:
        log.warning("Stripe webhook %s: could not re-fetch from Stripe: %s", event.id, exc)
        return jsonify(error={"code": "unavailable", "message": "try again"}), 503
    log.info("Stripe webhook %s %s: %s", event.id, event.type, outcome)
    return jsonify(received=True, outcome=outcome, at=utcnow().isoformat())
