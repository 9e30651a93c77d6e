"""Merchant orders after authorisation: capture on shipment, and item changes before capture
(a lower total adjusts the hold; a higher one within the hold raises it; beyond it the customer
approves a replacement order through a new pay link, which supersedes the old hold once paid).
Every state change is a move of the order store, no Stripe call happens inside a database
transaction, and each change queues its outbound webhook in the same transaction."""

from __future__ import annotations

from portal import checkout, mail, orders, receipts
from portal.api import webhooks_out
from portal.api.cancel import cancel_held
from portal.api.errors import ApiError
from portal.api.orders import (
    Basket,
    basket,
    load_for_key,
    open_merchant_order,
    serialize_session,
    settle_fulfilment,
    upstream_error,
)
from portal.api.representation import (
    HELD,
    serialize_order,
    status_of,
)
from portal.db import db
from portal.http import UpstreamError
from portal.models import ApiKey, Order, OrderState, utcnow
from portal.orders import timeline


def capture(services, key: ApiKey, reference: str, amount: int | None, request_key: str | None):
    order = settle_fulfilment(services, load_for_key(key, reference))
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
        raise upstream_error(exc, "The capture failed") from exc
    captured = int(intent.get("amount_received") or to_capture)
    with db.transaction() as session:
        won = orders.update(
            order,
            session=session,
            where=(Order.state == OrderState.FULFILLED) & Order.amount_captured_minor.is_(None),
            amount_captured_minor=captured,
            amount_paid_minor=captured,
        )
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
    return orders.refresh(order)


# --- changing the items --------------------------------------------------------------------------


def update_items(services, key: ApiKey, reference: str, items: list[dict]) -> dict:
    order = settle_fulfilment(services, load_for_key(key, reference))
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
    from portal.platforms.merchant.limits import increase_limit

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
                raise upstream_error(exc, "The authorisation could not be raised") from exc
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
            raise upstream_error(exc, "The open payment page could not be closed") from exc
    try:
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
    except UpstreamError as exc:
        raise upstream_error(exc, "The open payment page could not be checked") from exc
    return settle_fulfilment(
        services, checkout.sync_session(services, stripe_session, source="merchant update")
    )


def _apply(settings, order: Order, values: dict, states, *, prepared: bool = False) -> Order:
    extra = {"stripe_session_expires_at": None} if prepared else {}
    with db.transaction() as session:
        won = orders.update(
            order, session=session, where=Order.state.in_(states), **values, **extra
        )
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
    return orders.refresh(order)


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
    replacement = open_merchant_order(
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
        orders.update(
            order, session=session, platform_data={**data, "replaced_by": replacement.reference}
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
            orders.refresh(order), livemode=key.live, settings=services.settings
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
    replaces = (order.platform_data or {}).get("replaces")
    try:
        old = orders.get(replaces) if replaces else None
    except orders.NotFound:
        old = None
    if old is None or old.state not in HELD or old.amount_captured_minor is not None:
        return
    try:
        cancel_held(services, old, f"replaced by {order.reference}")
    except ApiError as exc:
        raise UpstreamError(exc.message, transient=exc.status == 503) from exc
