"""Merchant orders: how the API shows an order, loading one for its key, and creating checkout
sessions (redirect or pay-by-link). Capture and item changes are in `portal.api.capture`;
cancel, refunds and the expiry job in `portal.api.cancel`.

These functions never read `request`; the views pass the authenticated key and the validated
body. Every state change is a move of the order store (`portal.orders.move`), no Stripe
call happens inside a database transaction, and each change queues its outbound webhook in the
same transaction that makes it.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass

from portal import jobs, mail, orders, refunds
from portal.api.errors import ApiError, not_found
from portal.api.representation import captured_amount, iso, serialize_order
from portal.config import Settings
from portal.db import db
from portal.http import UpstreamError
from portal.models import ApiKey, Order, OrderState
from portal.money import MoneyError, normalise_currency
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.api")

PLATFORM = "merchant"
MAX_TOTAL = 99_999_999  # Stripe's largest amount for most currencies (eight digits)


# --- how the API shows an order (the rest is in portal.api.representation) --------------------


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
                "created": iso(order.paid_at),
            }
        )
    body["payments"] = payments
    body["refunds"] = [
        {
            "id": refund.stripe_id,
            "amount": refund.amount_minor,
            "currency": refund.currency.lower(),
            "status": refund.status,
            "created": iso(refund.created_at),
        }
        for refund in refunds.for_order(order.id)
    ]
    return body


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
    try:
        order = orders.get(reference)
    except orders.NotFound:
        order = None
    if order is None or order.platform != PLATFORM or order.merchant_key_id != key.id:
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
    order = open_merchant_order(
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


def open_merchant_order(
    key, cart: Basket, currency, *, customer, capture_method, platform_data, success_url
) -> Order:
    with db.transaction() as session:
        order = orders.create(
            {
                "platform": PLATFORM,
                "platform_ref": "chs_" + secrets.token_urlsafe(18),
                "description": cart.description,
                "sku": cart.sku,
                "quantity": cart.quantity,
                "currency": currency,
                "amount_minor": cart.total_minor,
                "list_unit_minor": cart.unit_minor,
                "customer_email": customer["email"],
                "customer_name": customer.get("name"),
                "platform_data": {"items": cart.items, **platform_data},
                "redirect_url": success_url,
                "merchant_key_id": key.id,
                "capture_method": capture_method,
            },
            session=session,
            message=(
                f"order opened through the merchant API ({key.prefix}, {platform_data['mode']})"
            ),
            detail={"to": "open", "api_key": key.prefix},
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


# --- shared by capture and cancel ---------------------------------------------------------------


def settle_fulfilment(services, order: Order) -> Order:
    """A paid order whose `order.paid`/`order.authorized` is still being queued: let it finish."""
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", services.settings.inline_fulfil_seconds)
        order = orders.refresh(order)
    return order


def upstream_error(exc: UpstreamError, what: str) -> ApiError:
    if exc.transient:
        return ApiError(503, "payment_provider_unavailable", f"{what}: try again shortly.")
    return ApiError(402, "payment_provider_refused", f"{what}: {exc}")
