"""Merchant orders: checkout sessions (redirect or pay-by-link), capture on shipment, cancel,
item changes before capture, refunds, and the expiry of unpaid links and uncaptured holds.

These functions never read `request`; the views pass the authenticated key and the validated
body. Every state change is a compare-and-set through `portal.checkout.transition`, no Stripe
call happens inside a database transaction, and each change queues its outbound webhook in the
same transaction that makes it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update

from portal import checkout, jobs, mail, receipts, refunds, timeline
from portal.api import webhooks_out
from portal.api.errors import ApiError, not_found
from portal.config import Settings
from portal.db import db
from portal.http import UpstreamError
from portal.models import ApiKey, Order, OrderState, utcnow
from portal.money import MoneyError, normalise_currency
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.api")

PLATFORM = "merchant"
MAX_TOTAL = 99_999_999  # Stripe's largest amount for most currencies (eight digits)
UNPAID = (OrderState.OPEN, OrderState.PAYING, OrderState.EXPIRED)
HELD = (OrderState.PAID, OrderState.FULFILLED)  # authorised (manual capture) or paid


# --- how the API shows an order ----------------------------------------------------------------


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def status_of(order: Order) -> str:
    state = order.state
    if state in UNPAID:
        return "open"
    if state == OrderState.PROCESSING:
        return "processing"
    if state in (*HELD, OrderState.FULFIL_FAILED):
        if order.capture_method == "manual":
            return "captured" if order.amount_captured_minor is not None else "authorized"
        return "paid"
    if state == OrderState.CANCELLED:
        return "expired" if (order.platform_data or {}).get("expired") else "cancelled"
    return str(state)  # payment_failed, refunded, partially_refunded


def captured_amount(order: Order) -> int | None:
    if order.capture_method == "manual":
        return order.amount_captured_minor
    return order.amount_paid_minor if order.paid_at is not None else None


def expires_at(settings: Settings, order: Order) -> datetime | None:
    status = status_of(order)
    if status == "open":
        return order.created_at + timedelta(days=settings.pay_link_days)
    if status == "authorized" and order.paid_at:
        return order.paid_at + timedelta(days=settings.auth_capture_days)
    return None


def serialize_order(
    order: Order, *, livemode: bool = False, settings: Settings | None = None
) -> dict:
    if settings is None:
        from flask import current_app

        settings = current_app.config["PORTAL"]
    data = order.platform_data or {}
    status = status_of(order)
    authorized = order.amount_authorized_minor
    capturable = 0
    if status == "authorized" and authorized is not None:
        capturable = min(order.amount_minor, authorized)
    return {
        "id": order.reference,
        "object": "order",
        "livemode": livemode,
        "status": status,
        "capture_method": order.capture_method or "automatic",
        "currency": order.currency.lower(),
        "amount_total": order.amount_minor,
        "amount_authorized": authorized,
        "amount_capturable": capturable,
        "amount_captured": captured_amount(order),
        "amount_refunded": order.amount_refunded_minor or 0,
        "items": data.get("items", []),
        "customer": {
            "email": order.customer_email,
            "name": order.customer_name,
            "company": data.get("company"),
        },
        "reference": data.get("reference"),
        "metadata": data.get("metadata", {}),
        "checkout_session": order.platform_ref,
        "url": settings.public_url + f"/orders/{order.reference}" if status == "open" else None,
        "created": _iso(order.created_at),
        "paid_at": _iso(order.paid_at),
        "expires_at": _iso(expires_at(settings, order)),
        "replaced_by": data.get("replaced_by"),
        "replaces": data.get("replaces"),
        "collected": collected(order),
    }


def serialize_order_detail(order: Order, *, livemode: bool, settings: Settings) -> dict:
    """The order with its payments and refunds (`GET /orders/{id}`): what the Smartpay seed's
    "list an order's payments" gives, and every refund whoever made it."""
    body = serialize_order(order, livemode=livemode, settings=settings)
    currency = order.currency.lower()
    payments = []
    if order.stripe_payment_intent_id and order.paid_at is not None:
        authorised_only = body["status"] == "authorized" or (
            order.capture_method == "manual" and order.amount_captured_minor is None
        )
        payments.append(
            {
                "id": order.stripe_payment_intent_id,
                "amount": (
                    order.amount_authorized_minor or 0
                    if authorised_only
                    else captured_amount(order) or 0
                ),
                "currency": currency,
                "status": "authorized" if authorised_only else "succeeded",
                "created": _iso(order.paid_at),
            }
        )
    body["payments"] = payments
    body["refunds"] = [
        {
            "id": refund.stripe_id,
            "amount": refund.amount_minor,
            "currency": refund.currency.lower(),
            "status": refund.status,
            "created": _iso(refund.created_at),
        }
        for refund in refunds.for_order(order.id)
    ]
    return body


def collected(order: Order) -> dict | None:
    """What Stripe Checkout collected from the buyer (portal.checkout.collected_details)."""
    if order.payer_email is None and not order.checkout_details:
        return None
    return {"email": order.payer_email, **(order.checkout_details or {})}


def serialize_session(services, key: ApiKey, order: Order) -> dict:
    return {
        "id": order.platform_ref,
        "object": "checkout_session",
        "mode": (order.platform_data or {}).get("mode", "redirect"),
        "url": services.url(f"/orders/{order.reference}"),
        "order": serialize_order(order, livemode=key.live, settings=services.settings),
    }


# --- loading and checking ----------------------------------------------------------------------


def load_for_key(key: ApiKey, reference: str, param: str = "id") -> Order:
    """The key's own order; another merchant's order is as missing as one that never was."""
    with db.reader() as session:
        order = session.scalar(
            select(Order).where(
                Order.reference == reference,
                Order.platform == PLATFORM,
                Order.merchant_key_id == key.id,
            )
        )
    if order is None:
        raise not_found("order", param)
    return order


@dataclass(frozen=True)
class Basket:
    items: list[dict]
    total_minor: int
    description: str
    quantity: int
    unit_minor: int | None
    sku: str | None


def basket(items: list[dict]) -> Basket:
    """The portal computes the total from the items; nothing the client adds up is trusted."""
    total = 0
    for index, item in enumerate(items):
        line = item["unit_amount"] * item["quantity"]
        if line > MAX_TOTAL:
            raise ApiError(
                400,
                "amount_too_large",
                f"Item {index} comes to {line}, more than the most one payment can be "
                f"({MAX_TOTAL}).",
                f"items[{index}]",
            )
        total += line
    if total > MAX_TOTAL:
        raise ApiError(
            400,
            "amount_too_large",
            f"The items come to {total}, more than the most one payment can be ({MAX_TOTAL}).",
            "items",
        )
    if total < 1:
        raise ApiError(400, "amount_too_small", "The items must come to more than zero.", "items")
    cleaned = [
        {k: item[k] for k in ("name", "unit_amount", "quantity", "sku") if k in item}
        for item in items
    ]
    if len(items) == 1:
        only = items[0]
        return Basket(
            cleaned, total, only["name"], only["quantity"], only["unit_amount"], only.get("sku")
        )
    description = "; ".join(f"{i['quantity']} × {i['name']}" for i in items)
    return Basket(cleaned, total, description[:500], 1, None, None)


def _currency(code: str) -> str:
    try:
        return normalise_currency(code)
    except MoneyError:
        raise ApiError(
            400, "currency_invalid", f"{code!r} is not a currency we know.", "currency"
        ) from None


def _checked_url(key: ApiKey, url: str | None, param: str) -> str | None:
    if url is None:
        return None
    try:
        checked = check_url(url, allow_http="loopback")
    except UnsafeUrl as exc:
        raise ApiError(400, "url_invalid", f"{param} is refused: {exc}.", param) from None
    host = checked.host
    if host not in (key.allowed_hosts or []):
        raise ApiError(
            400,
            "url_host_not_allowed",
            f"The host {host!r} is not one of this key's allowed hosts.",
            param,
        )
    return checked.url


def _mail_available(settings: Settings) -> bool:
    return bool(settings.smtp_url or settings.sandbox)


# --- checkout sessions ---------------------------------------------------------------------------


def create_checkout_session(services, key: ApiKey, body: dict) -> dict:
    settings = services.settings
    currency = _currency(body["currency"])
    cart = basket(body["items"])
    mode = body.get("mode", "redirect")
    success_url = _checked_url(key, body.get("success_url"), "success_url")
    cancel_url = _checked_url(key, body.get("cancel_url"), "cancel_url")
    if mode == "link" and not _mail_available(settings):
        raise ApiError(
            400,
            "link_mode_unavailable",
            "This portal has no outgoing mail (PORTAL_SMTP_URL): use mode redirect.",
            "mode",
        )
    customer = body["customer"]
    order = _open(
        key,
        cart,
        currency,
        customer=customer,
        capture_method=body.get("capture_method", "automatic"),
        platform_data={
            "mode": mode,
            "reference": body.get("reference"),
            "metadata": body.get("metadata", {}),
            "company": customer.get("company"),
            "cancel_url": cancel_url,
            "sales_rep_email": body.get("sales_rep_email"),
            "brand": key.brand_name,
            **checkout_options(key, body),
        },
        success_url=success_url,
    )
    return serialize_session(services, key, order)


def checkout_options(key: ApiKey, body: dict) -> dict:
    """The session's Stripe Checkout options: the key's defaults, each one the request gives
    replacing the key's. Kept on the order (platform_data) for portal.platforms.merchant."""
    options = {**(key.checkout_options or {}), **(body.get("checkout_options") or {})}
    options = {name: value for name, value in options.items() if value not in (None, False, [])}
    return {"checkout_options": options} if options else {}


def _open(
    key, cart: Basket, currency, *, customer, capture_method, platform_data, success_url
) -> Order:
    with db.transaction() as session:
        order = Order(
            platform=PLATFORM,
            platform_ref="chs_" + secrets.token_urlsafe(18),
            description=cart.description,
            sku=cart.sku,
            quantity=cart.quantity,
            currency=currency,
            amount_minor=cart.total_minor,
            list_unit_minor=cart.unit_minor,
            customer_email=customer["email"],
            customer_name=customer.get("name"),
            platform_data={"items": cart.items, **platform_data},
            redirect_url=success_url,
            merchant_key_id=key.id,
            capture_method=capture_method,
        )
        session.add(order)
        session.flush()
        timeline.record(
            order.id,
            "state",
            f"order opened through the merchant API ({key.prefix}, {platform_data['mode']})",
            {"to": "open", "api_key": key.prefix},
            session=session,
        )
        if platform_data["mode"] == "link":
            mail.queue(
                session,
                "pay_link",
                order,
                to=customer["email"],
                cc=platform_data.get("sales_rep_email"),
            )
    return order


# --- capture, cancel -----------------------------------------------------------------------------


def _settle_fulfilment(services, order: Order) -> Order:
    """A paid order whose `order.paid`/`order.authorized` is still being queued: let it finish."""
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", services.settings.inline_fulfil_seconds)
        order = checkout.reload(order)
    return order


def _upstream(exc: UpstreamError, what: str) -> ApiError:
    if exc.transient:
        return ApiError(503, "payment_provider_unavailable", f"{what}: try again shortly.")
    return ApiError(402, "payment_provider_refused", f"{what}: {exc}")


def capture(services, key: ApiKey, reference: str, amount: int | None, request_key: str | None):
    order = _settle_fulfilment(services, load_for_key(key, reference))
    if order.capture_method != "manual":
        raise ApiError(
            409,
            "order_not_capturable",
            "This order uses automatic capture: it was captured when the customer paid.",
        )
    status = status_of(order)
    if status == "captured" or order.amount_captured_minor is not None:
        raise ApiError(409, "order_already_captured", "This order has been captured already.")
    if status in {"cancelled", "expired"}:
        raise ApiError(409, "order_cancelled", "This order was cancelled: it cannot be captured.")
    if status != "authorized" or order.state != OrderState.FULFILLED:
        raise ApiError(
            409,
            "order_not_authorized",
            f"Only an authorised order can be captured; this one is {status}.",
        )
    authorized = order.amount_authorized_minor or 0
    to_capture = amount if amount is not None else min(order.amount_minor, authorized)
    if to_capture > authorized:
        raise ApiError(
            400,
            "amount_too_large",
            f"At most the authorised {authorized} can be captured.",
            "amount",
        )
    try:
        intent = services.stripe.capture_payment_intent(
            order.stripe_payment_intent_id,
            f"{order.reference}-capture-{to_capture}",
            amount_minor=to_capture if to_capture != authorized else None,
            order_id=order.id,
        )
    except UpstreamError as exc:
        raise _upstream(exc, "The capture failed") from exc
    captured = int(intent.get("amount_received") or to_capture)
    with db.transaction() as session:
        won = session.execute(
            update(Order)
            .where(
                Order.id == order.id,
                Order.state == OrderState.FULFILLED,
                Order.amount_captured_minor.is_(None),
            )
            .values(amount_captured_minor=captured, amount_paid_minor=captured, updated_at=utcnow())
        ).rowcount
        if won:
            timeline.record(
                order.id,
                "payment",
                f"captured {captured} of {authorized} authorised",
                {"payment_intent": order.stripe_payment_intent_id, "captured": captured},
                session=session,
            )
            webhooks_out.emit(session, services.settings, order, "order.captured")
            if receipts.portal_sends(services.settings, order):
                mail.queue(session, "receipt", order, to=order.customer_email)
    return checkout.reload(order)


def _void(services, order: Order) -> None:
    """Cancel the authorisation at Stripe; one that is already cancelled there is fine."""
    try:
        services.stripe.cancel_payment_intent(
            order.stripe_payment_intent_id, reason="abandoned", order_id=order.id
        )
    except UpstreamError as exc:
        if exc.transient:
            raise _upstream(exc, "The cancellation failed") from exc
        intent = services.stripe.retrieve_payment_intent(
            order.stripe_payment_intent_id, order_id=order.id
        )
        if intent.get("status") != "canceled":
            raise _upstream(exc, "The cancellation failed") from exc


def _cancel_held(services, order: Order, reason: str) -> bool:
    """Void an uncaptured authorisation and tell the merchant (through the `cancel` job)."""
    _void(services, order)
    with db.transaction() as session:
        moved = checkout.transition(
            session,
            order.id,
            HELD,
            OrderState.CANCELLED,
            where=Order.amount_captured_minor.is_(None),
            failure_reason=reason,
        )
        if moved:
            jobs.enqueue(session, "cancel", f"cancel:{order.id}", order_id=order.id)
    return moved


def cancel(services, key: ApiKey, reference: str, reason: str | None = None):
    order = _settle_fulfilment(services, load_for_key(key, reference))
    status = status_of(order)
    if status in {"cancelled", "expired"}:
        return order
    if order.state in UNPAID:
        checkout.cancel_order(services, order.reference)
        order = checkout.reload(order)
        if order.state == OrderState.CANCELLED:
            return order
        status = status_of(order)  # paid meanwhile: an authorisation can still be voided
    if status == "authorized" and order.state == OrderState.FULFILLED:
        _cancel_held(services, order, reason or "cancelled by the merchant")
        jobs.run_inline(services, f"cancel:{order.id}", services.settings.inline_fulfil_seconds)
        return checkout.reload(order)
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
    order = _settle_fulfilment(services, load_for_key(key, body["order"], param="order"))
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
        raise _upstream(exc, "The refund failed") from exc
    if recorded.job_key:
        jobs.run_inline(services, recorded.job_key, services.settings.inline_fulfil_seconds)
    order = checkout.reload(order)
    return {
        "id": stripe_refund.get("id"),
        "object": "refund",
        "order": serialize_order(order, livemode=key.live, settings=services.settings),
        "amount": recorded.amount_minor,  # Stripe's answer: a retry's is the first try's refund
        "currency": order.currency.lower(),
        "reason": reason,
        "status": stripe_refund.get("status") or "succeeded",
        "created": _iso(utcnow()),
    }


# --- changing the items --------------------------------------------------------------------------


def update_items(services, key: ApiKey, reference: str, items: list[dict]) -> dict:
    order = _settle_fulfilment(services, load_for_key(key, reference))
    cart = basket(items)
    data = dict(order.platform_data or {})
    if data.get("replaced_by"):
        raise ApiError(
            409,
            "order_replaced",
            f"This order was replaced by {data['replaced_by']}: change that one.",
        )
    if order.state == OrderState.PAYING and order.stripe_session_id:
        order = _close_open_session(services, order)
    values = {
        "description": cart.description,
        "sku": cart.sku,
        "quantity": cart.quantity,
        "list_unit_minor": cart.unit_minor,
        "amount_minor": cart.total_minor,
        "platform_data": {**data, "items": cart.items},
        "updated_at": utcnow(),
    }
    status = status_of(order)
    if order.state in (OrderState.OPEN, OrderState.EXPIRED):
        # Not paid yet: the next Pay press charges the new total.
        changed = _apply(
            services.settings, order, values, (OrderState.OPEN, OrderState.EXPIRED), prepared=True
        )
        return _updated(services, key, changed, "The customer will pay the new total.")
    if status != "authorized" or order.state != OrderState.FULFILLED:
        raise ApiError(
            409,
            "order_not_updatable",
            f"Items can change only before capture; this order is {status}.",
        )
    authorized = order.amount_authorized_minor or 0
    if cart.total_minor <= authorized:
        changed = _apply(services.settings, order, values, (OrderState.FULFILLED,))
        return _updated(
            services, key, changed, f"Capture will take {cart.total_minor} of the authorised hold."
        )
    from portal.platforms.merchant import increase_limit

    if cart.total_minor - authorized <= increase_limit(services.settings, order, authorized):
        try:
            services.stripe.increment_authorization(
                order.stripe_payment_intent_id,
                cart.total_minor,
                f"{order.reference}-increment-{cart.total_minor}",
                order_id=order.id,
            )
        except UpstreamError as exc:
            if exc.transient:
                raise _upstream(exc, "The authorisation could not be raised") from exc
            timeline.record(order.id, "note", f"authorisation not raised: {exc}")
        else:
            changed = _apply(
                services.settings,
                order,
                {**values, "amount_authorized_minor": cart.total_minor},
                (OrderState.FULFILLED,),
            )
            return _updated(
                services, key, changed, "The authorisation was raised to the new total."
            )
    return _replace(services, key, order, cart)


def _close_open_session(services, order: Order) -> Order:
    """An open Stripe page would charge the old total: close it before changing the amount."""
    try:
        services.stripe.expire_session(order.stripe_session_id, order_id=order.id)
    except UpstreamError as exc:
        if exc.transient:
            raise _upstream(exc, "The open payment page could not be closed") from exc
    try:
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
    except UpstreamError as exc:
        raise _upstream(exc, "The open payment page could not be checked") from exc
    return _settle_fulfilment(
        services, checkout.sync_session(services, stripe_session, source="merchant update")
    )


def _apply(settings, order: Order, values: dict, states, *, prepared: bool = False) -> Order:
    extra = {"stripe_session_expires_at": None} if prepared else {}
    with db.transaction() as session:
        won = session.execute(
            update(Order)
            .where(Order.id == order.id, Order.state.in_(states))
            .values(**values, **extra)
            .execution_options(synchronize_session=False)
        ).rowcount
        if not won:
            raise ApiError(409, "order_changed", "The order changed meanwhile; fetch it again.")
        timeline.record(
            order.id,
            "note",
            f"items changed through the merchant API: total {values['amount_minor']}",
            {"items": values["platform_data"]["items"]},
            session=session,
        )
        webhooks_out.emit(
            session, settings, order, "order.updated", discriminator=f"{utcnow().timestamp():.6f}"
        )
    return checkout.reload(order)


def _updated(services, key, order: Order, message: str) -> dict:
    return {
        "order": serialize_order(order, livemode=key.live, settings=services.settings),
        "approval_required": False,
        "replacement": None,
        "message": message,
    }


def _replace(services, key: ApiKey, order: Order, cart: Basket) -> dict:
    """More than the hold covers: the customer approves the new total through a new pay link.
    The old authorisation stays (and can still be captured) until the new one is authorised."""
    data = dict(order.platform_data or {})
    replacement = _open(
        key,
        cart,
        order.currency,
        customer={"email": order.customer_email, "name": order.customer_name},
        capture_method="manual",
        platform_data={
            "mode": "link",
            "reference": data.get("reference"),
            "metadata": data.get("metadata", {}),
            "company": data.get("company"),
            "cancel_url": data.get("cancel_url"),
            "sales_rep_email": data.get("sales_rep_email"),
            "brand": data.get("brand"),
            "replaces": order.reference,
        },
        success_url=order.redirect_url,
    )
    with db.transaction() as session:
        session.execute(
            update(Order)
            .where(Order.id == order.id)
            .values(platform_data={**data, "replaced_by": replacement.reference})
        )
        timeline.record(
            order.id,
            "note",
            f"increase to {cart.total_minor} needs the customer's approval: "
            f"replacement {replacement.reference} sent",
            session=session,
        )
        webhooks_out.emit(
            session, services.settings, order, "order.updated", discriminator="replaced"
        )
    return {
        "order": serialize_order(
            checkout.reload(order), livemode=key.live, settings=services.settings
        ),
        "approval_required": True,
        "replacement": serialize_session(services, key, replacement),
        "message": (
            f"The new total is more than the authorised {order.amount_authorized_minor}: the "
            "customer was emailed a new pay link. The old authorisation is voided once the new "
            "one is authorised."
        ),
    }


def supersede(services, order: Order) -> None:
    """The replacement `order` is authorised: void the authorisation it replaces."""
    with db.reader() as session:
        old = session.scalar(
            select(Order).where(Order.reference == (order.platform_data or {}).get("replaces"))
        )
    if old is None or old.state not in HELD or old.amount_captured_minor is not None:
        return
    try:
        _cancel_held(services, old, f"replaced by {order.reference}")
    except ApiError as exc:
        raise UpstreamError(exc.message, transient=exc.status == 503) from exc


# --- expiry (a periodic job) ---------------------------------------------------------------------


def run_expiry(services, job) -> None:
    """Unpaid checkout sessions older than PORTAL_PAY_LINK_DAYS become `expired`; authorisations
    not captured within PORTAL_AUTH_CAPTURE_DAYS (the card's hold window) are voided and the
    merchant is told `order.cancelled`."""
    settings = services.settings
    now = utcnow()
    failures = 0
    with db.reader() as session:
        unpaid = session.scalars(
            select(Order).where(
                Order.platform == PLATFORM,
                Order.state.in_(UNPAID),
                Order.created_at < now - timedelta(days=settings.pay_link_days),
            )
        ).all()
        held = session.scalars(
            select(Order).where(
                Order.platform == PLATFORM,
                Order.capture_method == "manual",
                Order.state.in_(HELD),
                Order.amount_captured_minor.is_(None),
                Order.paid_at < now - timedelta(days=settings.auth_capture_days),
            )
        ).all()
    for order in unpaid:
        with db.transaction() as session:
            session.execute(
                update(Order)
                .where(Order.id == order.id)
                .values(platform_data={**(order.platform_data or {}), "expired": True})
            )
        try:
            checkout.cancel_order(services, order.reference)
        except checkout.CheckoutError as exc:
            failures += 1
            log.warning("expiry of %s: %s", order.reference, exc.message)
    for order in held:
        try:
            _cancel_held(services, order, "not captured in time: the authorisation expired")
        except ApiError as exc:
            failures += 1
            log.warning("authorisation expiry of %s: %s", order.reference, exc.message)
    if failures:
        raise UpstreamError(f"{failures} order(s) could not be expired", transient=True)


jobs.register("merchant_expiry", run_expiry, every_seconds=3600)
