"""Merchant orders ending early: cancel (an unpaid order, or a voided authorisation), refunds
through the one refund service, and the expiry job of unpaid links and uncaptured holds.
Every state change is a move of the order store, no Stripe call happens inside a database
transaction, and each change queues its outbound webhook in the same transaction."""

from __future__ import annotations

import logging
from datetime import timedelta

from portal import checkout, jobs, orders, refunds
from portal.api.errors import ApiError
from portal.api.orders import (
    PLATFORM,
    load_for_key,
    settle_fulfilment,
    upstream_error,
)
from portal.api.representation import (
    HELD,
    UNPAID,
    captured_amount,
    iso,
    serialize_order,
    status_of,
)
from portal.db import db
from portal.http import UpstreamError
from portal.models import ApiKey, Order, OrderState, utcnow

log = logging.getLogger("portal.api")


def _void(services, order: Order) -> None:
    """Cancel the authorisation at Stripe; one that is already cancelled there is fine."""
    try:
        services.stripe.cancel_payment_intent(
            order.stripe_payment_intent_id, reason="abandoned", order_id=order.id
        )
    except UpstreamError as exc:
        if exc.transient:
            raise upstream_error(exc, "The cancellation failed") from exc
        intent = services.stripe.retrieve_payment_intent(
            order.stripe_payment_intent_id, order_id=order.id
        )
        if intent.get("status") != "canceled":
            raise upstream_error(exc, "The cancellation failed") from exc


def cancel_held(services, order: Order, reason: str) -> bool:
    """Void an uncaptured authorisation and tell the merchant (through the `cancel` job)."""
    _void(services, order)
    with db.transaction() as session:
        moved = orders.move(
            order,
            "void",
            session=session,
            where=Order.amount_captured_minor.is_(None),
            failure_reason=reason,
        )
        if moved:
            jobs.enqueue(session, "cancel", f"cancel:{order.id}", order_id=order.id)
    return moved is not None


def cancel(services, key: ApiKey, reference: str, reason: str | None = None):
    order = settle_fulfilment(services, load_for_key(key, reference))
    status = status_of(order)
    if status in {"cancelled", "expired"}:
        return order
    if order.state in UNPAID:
        checkout.cancel_order(services, order.reference)
        order = orders.refresh(order)
        if order.state == OrderState.CANCELLED:
            return order
        status = status_of(order)  # paid meanwhile: an authorisation can still be voided
    if status == "authorized" and order.state == OrderState.FULFILLED:
        cancel_held(services, order, reason or "cancelled by the merchant")
        jobs.run_inline(services, f"cancel:{order.id}", services.settings.inline_fulfil_seconds)
        return orders.refresh(order)
    raise ApiError(
        409,
        "order_not_cancellable",
        f"This order is {status}: "
        + ("refund it instead." if captured_amount(order) else "it cannot be cancelled now."),
    )


# --- refunds ------------------------------------------------------------------------------------


def refund(services, key: ApiKey, body: dict, request_key: str | None) -> dict:
    """A refund through the one refund service (`portal.refunds`), as the console makes them:
    the same rules, the same record, the same `platform_refund` job (which emits
    `order.refunded` to the merchant's endpoints)."""
    order = settle_fulfilment(services, load_for_key(key, body["order"], param="order"))
    already = order.amount_refunded_minor or 0
    amount = body.get("amount", refunds.remaining_minor(order))
    reason = body.get("reason")
    # With the client's idempotency key a retry is the same refund; without one, the same amount
    # on the same refunded-so-far is (as for a double click in the console).
    suffix = f"key-{request_key}" if request_key else f"{already}-{amount}"
    try:
        stripe_refund, recorded = refunds.refund(
            services,
            order,
            amount,
            idempotency_key=f"{order.reference}-refund-{suffix}",
            source="api",
            reason=reason,
            metadata={"reason": (reason or "")[:500]},
            client_key=request_key is not None,
        )
    except refunds.RefundRefused as exc:
        if exc.code in {"amount_too_large", "nothing_left", "amount_invalid"}:
            raise ApiError(400, "amount_too_large", exc.message, "amount") from exc
        if exc.code == "partial_refund_not_allowed":
            raise ApiError(409, "order_not_refundable", exc.message, "amount") from exc
        raise ApiError(
            409,
            "order_not_refundable",
            f"Only a captured order can be refunded; this one is {status_of(order)}.",
            "order",
        ) from exc
    except UpstreamError as exc:
        raise upstream_error(exc, "The refund failed") from exc
    if recorded.job_key:
        jobs.run_inline(services, recorded.job_key, services.settings.inline_fulfil_seconds)
    order = orders.refresh(order)
    return {
        "id": stripe_refund.get("id"),
        "object": "refund",
        "order": serialize_order(order, livemode=key.live, settings=services.settings),
        "amount": recorded.amount_minor,  # Stripe's answer: a retry's is the first try's refund
        "currency": order.currency.lower(),
        "reason": reason,
        "status": stripe_refund.get("status") or "succeeded",
        "created": iso(utcnow()),
    }


# --- expiry (a periodic job) ---------------------------------------------------------------------


def run_expiry(services, job) -> None:
    """Unpaid checkout sessions older than PORTAL_PAY_LINK_DAYS become `expired`; authorisations
    not captured within PORTAL_AUTH_CAPTURE_DAYS (the card's hold window) are voided and the
    merchant is told `order.cancelled`."""
    settings = services.settings
    now = utcnow()
    failures = 0
    unpaid = orders.where(
        Order.platform == PLATFORM,
        Order.state.in_(UNPAID),
        Order.created_at < now - timedelta(days=settings.pay_link_days),
    )
    held = orders.where(
        Order.platform == PLATFORM,
        Order.capture_method == "manual",
        Order.state.in_(HELD),
        Order.amount_captured_minor.is_(None),
        Order.paid_at < now - timedelta(days=settings.auth_capture_days),
    )
    for order in unpaid:
        orders.update(order, platform_data={**(order.platform_data or {}), "expired": True})
        try:
            checkout.cancel_order(services, order.reference)
        except checkout.CheckoutError as exc:
            failures += 1
            log.warning("expiry of %s: %s", order.reference, exc.message)
    for order in held:
        try:
            cancel_held(services, order, "not captured in time: the authorisation expired")
        except ApiError as exc:
            failures += 1
            log.warning("authorisation expiry of %s: %s", order.reference, exc.message)
    if failures:
        raise UpstreamError(f"{failures} order(s) could not be expired", transient=True)
