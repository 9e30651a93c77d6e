"""How the merchant API shows an order (`serialize_order`): its status, amounts and dates. Below
the API's services, so the outbound webhooks (`portal.api.webhooks_out`) can show an order the
way the API does without importing the services that send them."""

from __future__ import annotations

from datetime import datetime, timedelta

from portal.config import Settings
from portal.models import Order, OrderState
from portal.orders import states

UNPAID = states.MOVES["cancel"].sources  # open, paying, expired
HELD = states.MOVES["void"].sources  # authorised (manual capture) or paid


def iso(value: datetime | None) -> str | None:
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
        "created": iso(order.created_at),
        "paid_at": iso(order.paid_at),
        "expires_at": iso(expires_at(settings, order)),
        "replaced_by": data.get("replaced_by"),
        "replaces": data.get("replaces"),
        "collected": collected(order),
    }


def collected(order: Order) -> dict | None:
    """What Stripe Checkout collected from the buyer (portal.checkout.collected_details)."""
    if order.payer_email is None and not order.checkout_details:
        return None
    return {"email": order.payer_email, **(order.checkout_details or {})}
