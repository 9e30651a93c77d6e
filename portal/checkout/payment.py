"""Paying: the Pay button reuses the open Checkout Session or fixes the next attempt in the row
and creates one, under an idempotency key, so a double click or a crash never makes two."""

from __future__ import annotations

import logging
from datetime import timedelta

from portal import jobs, orders, receipts, recovery
from portal.checkout.common import CheckoutError, Next
from portal.checkout.sessions import sync_session
from portal.checkout.tax import TaxQuote, quote_tax
from portal.config import Settings
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import Order, OrderState, utcnow
from portal.orders import timeline
from portal.stripe_gateway import CheckoutRequest

log = logging.getLogger("portal.checkout")

# A prepared attempt must leave Stripe this long (its minimum is 30 minutes) before it expires.
MIN_SESSION_LIFETIME = timedelta(minutes=31)


def _prepare_attempt(settings: Settings, order: Order, quote: TaxQuote) -> Order:
    """Fix the parameters of the next Checkout Session in the row, so any retry of the create call
    (a double click, a crash) sends Stripe the same parameters under the same idempotency key."""
    now = utcnow()
    prepared = (
        order.state == OrderState.OPEN
        and order.stripe_session_id is None
        and order.stripe_session_expires_at is not None
        and order.stripe_session_expires_at - now > MIN_SESSION_LIFETIME
        and order.tax_mode == quote.mode
        and (quote.mode != "fixed" or order.tax_country == quote.country)
    )
    if prepared:
        return order
    lifetime = max(settings.stripe_session_minutes, 32)
    # A compare-and-set on the attempt number: of two clicks, one prepares the attempt.
    prepared_order = orders.update(
        order,
        expect={"state": OrderState.OPEN, "session_attempt": order.session_attempt},
        session_attempt=order.session_attempt + 1,
        stripe_session_expires_at=(now + timedelta(minutes=lifetime)).replace(microsecond=0),
        tax_mode=quote.mode,
        tax_country=quote.country,
        tax_rate=None if quote.rate is None else f"{quote.rate.normalize():f}",
        tax_minor=quote.amount_minor,
        updated_at=now,
    )
    # The row as this update left it; if another click changed it first, as it is now.
    return prepared_order or orders.refresh(order)


def start_payment(services, reference: str, country: str | None = None) -> Next:
    """The Pay button: reuse the open Checkout Session or create one; return where to go."""
    order = orders.get(reference)
    if order.is_paid:
        return Next(page="status", order=order)
    if order.state in {OrderState.CANCELLED, OrderState.PAYMENT_FAILED}:
        raise CheckoutError(
            409,
            N_("This order is closed"),
            N_("This order was cancelled. Please go back to the course and start again."),
        )
    if order.state == OrderState.PROCESSING:
        return Next(page="status", order=order)
    if order.state == OrderState.PAYING and order.stripe_session_id:
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
        if stripe_session["status"] == "open":
            return Next(redirect_url=stripe_session["url"], order=order)
        order = sync_session(services, stripe_session, source="pay button")
        if order is None or order.state not in {OrderState.EXPIRED, OrderState.OPEN}:
            return Next(page="status", order=order)
    if order.state == OrderState.EXPIRED:
        orders.move(
            order,
            "reopen",
            stripe_session_id=None,
            stripe_session_url=None,
            stripe_session_expires_at=None,
        )
        order = orders.refresh(order)
    if order.state != OrderState.OPEN:
        return Next(page="status", order=order)

    options = services.platform(order.platform).checkout_options(order)
    quote = (
        TaxQuote("none")  # the platform's price already includes its tax
        if options.tax_included
        else quote_tax(services.settings, order, country)
    )
    order = _prepare_attempt(services.settings, order, quote)
    if order.state != OrderState.OPEN:
        return Next(page="status", order=order)

    if order.total_minor == 0 and quote.mode != "stripe" and options.mode == "payment":
        # Nothing to charge (a 100% promo): no Stripe session, straight to fulfilment.
        with db.transaction() as session:
            if orders.move(
                order,
                "nothing_to_pay",
                session=session,
                amount_paid_minor=0,
                tax_paid_minor=0,
                paid_at=utcnow(),
            ):
                jobs.enqueue(session, "fulfil", f"fulfil:{order.id}", order_id=order.id)
        return Next(page="status", order=orders.refresh(order))

    request = CheckoutRequest(
        order_reference=order.reference,
        platform=order.platform,
        description=order.description,
        sku=order.sku,
        currency=order.currency,
        amount_minor=order.amount_minor,
        tax_minor=order.tax_minor if quote.mode == "fixed" else 0,
        tax_label=quote.label,
        automatic_tax=quote.mode == "stripe",
        customer_email=order.customer_email,
        locale=order.locale,
        success_url=services.url(
            f"/orders/{order.reference}/return?session_id={{CHECKOUT_SESSION_ID}}"
        ),
        cancel_url=options.cancel_url or services.url(f"/orders/{order.reference}/cancelled"),
        expires_at=order.stripe_session_expires_at,
        idempotency_key=f"{order.reference}-attempt-{order.session_attempt}",
        mode=options.mode,
        customer=options.customer,
        setup_future_usage=options.setup_future_usage,
        capture_method=options.capture_method,
        incremental_authorization=options.incremental_authorization,
        receipt_email=(
            order.customer_email if receipts.sender(services.settings, order) == "stripe" else None
        ),
        quantity=order.quantity or 1,
        # A price with its tax inside cannot be split into list price less discount: one line.
        list_unit_minor=None if options.tax_included else order.list_unit_minor,
        promo_code=None if options.tax_included else order.promo_code,
        billing_address_collection=options.billing_address_collection,
        recovery=recovery.offered(services.settings, order),
        shipping_countries=options.shipping_countries,
        tax_id_collection=options.tax_id_collection,
        invoice_creation=options.invoice_creation,
        allow_promotion_codes=options.allow_promotion_codes,
        phone_number_collection=options.phone_number_collection,
    )
    # The create call's timeline event is written with the state change that follows it, in
    # the same transaction. If the call fails, or that write does, it is written alone.
    calls: list = []
    try:
        stripe_session = services.stripe.create_session(
            request, order_id=order.id, record=calls.append
        )
    except UpstreamError as exc:
        _record_calls(order.id, calls)
        log.warning("could not create a Checkout Session: %s", exc, extra={"order_id": order.id})
        raise CheckoutError(
            503,
            N_("Payment is temporarily unavailable"),
            N_("We could not reach our payment provider. Please try again in a minute."),
        ) from exc
    except Exception:
        _record_calls(order.id, calls)
        raise
    try:
        won = orders.move(
            order,
            "pay",
            before=[timeline.call_event(order.id, call) for call in calls],
            stripe_session_id=stripe_session["id"],
            stripe_session_url=stripe_session["url"],
        )
    except Exception:
        _record_calls(order.id, calls)  # rolled back with the transaction
        raise
    if not won:
        order = orders.refresh(order)
        if order.state == OrderState.PAYING and order.stripe_session_id == stripe_session["id"]:
            return Next(redirect_url=stripe_session["url"], order=order)  # the other click won
        return Next(page="status", order=order)
    return Next(redirect_url=stripe_session["url"], order=order)


def _record_calls(order_id: int, calls: list) -> None:
    for call in calls:
        timeline.record_call(order_id, call)
