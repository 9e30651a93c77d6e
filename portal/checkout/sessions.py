"""Payment results: `sync_session` is the one place a Stripe Checkout Session becomes a payment.
The return page, the webhook, the expiry sweep and reconciliation all call it, and only the
winner of the `-> paid` compare-and-set queues the fulfilment job. Also the learner's way back
(`handle_return`, `refresh_status`) and out (`cancel_order`)."""

from __future__ import annotations

import logging

from portal import alerts, jobs, orders, recovery
from portal.checkout.common import CheckoutError, Next
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import PAID_STATES, Order, OrderState, utcnow
from portal.orders import timeline

log = logging.getLogger("portal.checkout")


def sync_session(services, stripe_session, *, source: str) -> Order | None:
    """Bring the order in line with a Checkout Session fetched from Stripe. Idempotent.

    Returns the order after the update, or None when the session is not one of ours.
    """
    order = orders.find_for_session(stripe_session)
    if order is None:
        return None
    status = stripe_session.get("status")
    payment_status = stripe_session.get("payment_status")
    if status == "complete" and payment_status in {"paid", "no_payment_required"}:
        record_payment(services, order, stripe_session, source=source)
    elif status == "complete" and _authorised(services, order, stripe_session):
        record_payment(services, order, stripe_session, source=source)  # captured later
    elif status == "complete":
        orders.move(order, "complete_unpaid", stripe_session_id=stripe_session["id"])
    elif status == "expired":
        # Only the session we are waiting on can expire the order; an older one cannot.
        orders.move(order, "session_expired", where=Order.stripe_session_id == stripe_session["id"])
    return orders.refresh(order)


def _authorised(services, order: Order, stripe_session) -> bool:
    """A manual-capture session may complete `unpaid` with its PaymentIntent authorised and
    waiting for capture: that is a payment to record (the hold is captured later)."""
    payment_intent = stripe_session.get("payment_intent")
    if order.capture_method != "manual" or not payment_intent:
        return False
    if not isinstance(payment_intent, str):
        return payment_intent.get("status") == "requires_capture"
    try:
        intent = services.stripe.retrieve_payment_intent(payment_intent, order_id=order.id)
    except UpstreamError:
        return False  # `processing` for now; the status page and the sweep look again
    return intent.get("status") == "requires_capture"


def _present(value):
    """`value` without its empty parts (None, "", [], {}), or None when nothing is left."""
    if isinstance(value, dict):
        kept = {k: v for k, v in ((k, _present(v)) for k, v in value.items()) if v is not None}
        return kept or None
    if isinstance(value, list):
        kept = [v for v in (_present(v) for v in value) if v is not None]
        return kept or None
    return None if value in (None, "") else value


def collected_details(stripe_session: dict) -> tuple[str | None, dict | None]:
    """What Stripe Checkout collected from the payer: their email (lower-case), and the rest
    as the order keeps it: name, phone, billing address, tax ids, shipping, invoice id."""
    customer = stripe_session.get("customer_details") or {}
    email = str(customer.get("email") or "").strip().lower() or None
    shipping = (stripe_session.get("collected_information") or {}).get("shipping_details") or (
        stripe_session.get("shipping_details")
    )
    invoice = stripe_session.get("invoice")
    if isinstance(invoice, dict):
        invoice = invoice.get("id")
    details = _present(
        {
            "name": customer.get("name"),
            "phone": customer.get("phone"),
            "address": customer.get("address"),
            "tax_exempt": customer.get("tax_exempt")
            if customer.get("tax_exempt") != "none"
            else None,
            "tax_ids": [
                {"type": t.get("type"), "value": t.get("value")}
                for t in customer.get("tax_ids") or []
                if isinstance(t, dict)
            ],
            "shipping": shipping if isinstance(shipping, dict) else None,
            "invoice": {"id": invoice} if isinstance(invoice, str) else None,
        }
    )
    return email, details


def _with_invoice(services, order: Order, details: dict | None) -> dict | None:
    """The Stripe invoice of the payment, with its number and links (the buyer's PDF), when the
    session made one. Stripe unreachable: the id alone, the links are on Stripe's dashboard."""
    invoice = (details or {}).get("invoice")
    if not invoice:
        return details
    try:
        found = services.stripe.retrieve_invoice(invoice["id"], order_id=order.id)
    except UpstreamError:
        return details
    links = _present(
        {
            "number": found.get("number"),
            "url": found.get("hosted_invoice_url"),
            "pdf": found.get("invoice_pdf"),
        }
    )
    return {**details, "invoice": {**invoice, **(links or {})}}


def record_payment(services, order: Order, stripe_session, *, source: str) -> bool:
    """`-> paid` compare-and-set; the winner queues the one fulfilment job. Returns True if won."""
    payer_email, details = collected_details(stripe_session)
    details = _with_invoice(services, order, details)
    amount_total = stripe_session.get("amount_total") or 0  # null for a setup-mode session
    total_details = stripe_session.get("total_details") or {}
    tax_paid = total_details.get("amount_tax") or 0
    if order.tax_mode == "fixed":
        tax_paid = order.tax_minor
    payment_intent = stripe_session.get("payment_intent")
    if not isinstance(payment_intent, str) and payment_intent is not None:
        payment_intent = payment_intent.get("id")
    expected_total = order.amount_minor + (
        tax_paid if order.tax_mode == "stripe" else order.tax_minor
    )
    if stripe_session.get("allow_promotion_codes"):
        # A promotion code the buyer entered on Stripe's page: Stripe's discount, not a gap.
        expected_total -= total_details.get("amount_discount") or 0
    currency = (stripe_session.get("currency") or "").upper()
    with db.transaction() as session:
        moved = orders.move(
            order,
            "paid",
            session=session,
            stripe_session_id=stripe_session["id"],
            stripe_payment_intent_id=payment_intent,
            amount_paid_minor=amount_total,
            tax_paid_minor=tax_paid,
            paid_at=utcnow(),
            amount_authorized_minor=(
                amount_total if order.capture_method == "manual" else order.amount_authorized_minor
            ),
            payer_email=payer_email,
            checkout_details=details,
        )
        won = moved is not None
        if won:
            recovery.record_recovered(session, order, stripe_session, amount_total, currency)
            timeline.record(
                order.id,
                "payment",
                f"payment recorded from {source}",
                {
                    "session": stripe_session["id"],
                    "payment_intent": payment_intent,
                    "amount_total": amount_total,
                    "currency": currency,
                },
                session=session,
            )
            if amount_total != expected_total or currency != order.currency:
                alerts.raise_alert(
                    session,
                    order,
                    "amount_mismatch",
                    f"amount charged differs from the order: {amount_total} {currency} charged, "
                    f"{expected_total} {order.currency} expected",
                    key=str(order.id),
                    detail={
                        "charged": amount_total,
                        "expected": expected_total,
                        "currency": currency,
                    },
                )
            jobs.enqueue(session, "fulfil", f"fulfil:{order.id}", order_id=order.id)
    if won:
        log.info("order %s paid (%s)", order.reference, source, extra={"order_id": order.id})
    return won


def payment_failed(services, stripe_session, reason: str) -> Order | None:
    """A delayed payment method failed after checkout completed."""
    order = orders.find_for_session(stripe_session)
    if order is None:
        return None
    with db.transaction() as session:
        if orders.move(order, "payment_failed", session=session, failure_reason=reason):
            jobs.enqueue(
                session,
                "payment_failed",
                f"payment_failed:{order.id}",
                order_id=order.id,
                payload={"reason": reason},
            )
    return orders.refresh(order)


def handle_return(services, reference: str, session_id: str | None) -> Next:
    """The learner came back from Stripe. Trust nothing in the URL: ask Stripe."""
    order = orders.get(reference)
    if not session_id or not session_id.startswith("cs_") or len(session_id) > 255:
        raise CheckoutError(400, N_("Invalid return link"), N_("This payment link is not valid."))
    if order.state not in PAID_STATES:
        try:
            stripe_session = services.stripe.retrieve_session(session_id, order_id=order.id)
        except UpstreamError as exc:
            if exc.transient:
                return Next(page="status", order=order)  # the status page keeps checking
            raise CheckoutError(
                400, N_("Invalid return link"), N_("This payment link is not valid.")
            ) from exc
        if stripe_session.get("client_reference_id") != order.reference:
            raise CheckoutError(
                400, N_("Invalid return link"), N_("This payment link is not valid.")
            )
        order = sync_session(services, stripe_session, source="return page")
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", services.settings.inline_fulfil_seconds)
        order = orders.refresh(order)
    return next_for_status(services, order)


def next_for_status(services, order: Order) -> Next:
    if order.state == OrderState.FULFILLED:
        target = services.allowed_redirect(order.redirect_url)
        if target:
            return Next(redirect_url=target, order=order)
    return Next(page="status", order=order)


def refresh_status(services, reference: str) -> Next:
    """The self-refreshing status page: check again, nudge a stalled fulfilment, move on."""
    order = orders.get(reference)
    # PAYING here means the return page could not reach Stripe: the learner may well have paid.
    if order.state in {OrderState.PROCESSING, OrderState.PAYING} and order.stripe_session_id:
        try:
            stripe_session = services.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            order = sync_session(services, stripe_session, source="status page")
        except UpstreamError:
            pass
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", 1.0, only_if_due=True)
        order = orders.refresh(order)
    return next_for_status(services, order)


def cancel_order(services, reference: str) -> Next:
    """The learner gave up: close the Stripe session first (so it can no longer be paid), then
    tell the platform and follow its redirect."""
    order = orders.get(reference)
    if order.is_paid or order.state == OrderState.PROCESSING:
        return Next(page="status", order=order)
    if order.state == OrderState.PAYING and order.stripe_session_id:
        try:
            services.stripe.expire_session(order.stripe_session_id, order_id=order.id)
        except UpstreamError as exc:
            if exc.transient:
                raise CheckoutError(
                    503, N_("Please try again"), N_("We could not reach our payment provider.")
                ) from exc
            # Not open any more: it may have been paid in another tab. Ask Stripe.
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
        order = sync_session(services, stripe_session, source="cancel")
        if order.is_paid or order.state == OrderState.PROCESSING:
            return Next(page="status", order=order)
    with db.transaction() as session:
        if orders.move(order, "cancel", session=session):
            jobs.enqueue(session, "cancel", f"cancel:{order.id}", order_id=order.id)
    jobs.run_inline(services, f"cancel:{order.id}", services.settings.inline_fulfil_seconds)
    order = orders.refresh(order)
    target = services.allowed_redirect(order.redirect_url)
    if order.state == OrderState.CANCELLED and target:
        return Next(redirect_url=target, order=order)
    return Next(page="status", order=order)
