"""Cleeng's learner pages: the entry URL `GET /cleeng/checkout?orderId=ID` (or a signed offer
link) and Stripe's cancel page; the blueprint also carries Cleeng's webhook (`webhooks`).
"""

from __future__ import annotations

import logging

from flask import Blueprint, redirect, request, url_for

from portal import orders
from portal.checkout import CheckoutError, open_order, order_not_found
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import OrderState
from portal.platforms.cleeng.client import ORDER_ID, PLATFORM
from portal.platforms.cleeng.offer_link import order_from_offer, unavailable
from portal.platforms.cleeng.platform import CleengPlatform
from portal.platforms.cleeng.review import render_cleeng_review
from portal.platforms.cleeng.webhooks import webhook

log = logging.getLogger("portal.cleeng")


bp = Blueprint("cleeng", __name__)
# Cleeng's webhook is authenticated by its HMAC signature (the blueprint is CSRF-exempt).
bp.add_url_rule("/webhooks/cleeng", view_func=webhook, methods=["POST"])


@bp.get("/cleeng/checkout")
def checkout():
    """Cleeng's payment page URL: `?orderId=ID`, an order Cleeng's front end created; or (opt-in,
    `PORTAL_CLEENG_OFFER_LINK_SECRET`) a signed `?offerId=&customerId=...` link, for which the
    portal creates the order and redirects to its `?orderId=` page."""
    from portal.views import learner_locale, services, show_order

    if "orderId" not in request.args and "offerId" in request.args:
        platform = services().platform(PLATFORM)
        if not platform.client.configured:
            raise CheckoutError(
                503,
                N_("Checkout is not available here yet"),
                N_(
                    "Paying for subscriptions is not set up on this site. Please try again "
                    "later, or contact support."
                ),
            )
        created = order_from_offer(platform, services().settings)
        return redirect(url_for("cleeng.checkout", orderId=created), 303)
    cleeng_order_id = request.args.get("orderId", "")
    if not ORDER_ID.fullmatch(cleeng_order_id):
        raise CheckoutError(
            400,
            N_("This checkout link is not valid"),
            N_(
                "The link that brought you here is incomplete or damaged. Please go back to the "
                "subscription page and choose your plan again."
            ),
        )
    platform: CleengPlatform = services().platform(PLATFORM)
    if not platform.client.configured:
        raise CheckoutError(
            503,
            N_("Checkout is not available here yet"),
            N_(
                "Paying for subscriptions is not set up on this site. Please try again later, "
                "or contact support."
            ),
        )
    existing = orders.find(PLATFORM, cleeng_order_id)
    if existing is not None and (
        existing.is_paid or existing.state in {OrderState.PROCESSING, OrderState.CANCELLED}
    ):
        return show_order(existing)
    try:
        order = platform.client.get_order(
            cleeng_order_id, order_id=existing.id if existing else None
        )
    except UpstreamError as exc:
        if exc.status == 403:
            raise CheckoutError(
                403,
                N_("This order cannot be paid here"),
                N_(
                    "It belongs to another subscription service. Please go back to the "
                    "subscription page and choose your plan again."
                ),
            ) from exc
        log.error("Cleeng order %s could not be loaded: %s", cleeng_order_id, exc)
        raise unavailable() from exc
    if order is None:
        raise CheckoutError(
            404,
            N_("Order not found"),
            N_(
                "We could not find this order. Please go back to the subscription page and "
                "choose your plan again."
            ),
        )
    refusal = platform.refusal(order, cleeng_order_id)
    if refusal is not None:
        log.warning("Cleeng order %s refused: %s", cleeng_order_id, refusal.title)
        raise refusal
    try:
        draft = platform.draft(order, learner_locale())
    except UpstreamError as exc:
        log.error("Cleeng order %s is malformed: %s", cleeng_order_id, exc)
        raise CheckoutError(
            502,
            N_("This order cannot be paid here"),
            N_("The subscription service sent details we cannot charge. Please contact support."),
        ) from exc
    ours = open_order(draft)
    if ours.is_paid or ours.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(ours)
    return render_cleeng_review(ours)


@bp.get("/cleeng/orders/<reference>/cancelled")
def cancelled(reference):
    """Stripe's cancel_url for Cleeng orders: the learner chose "back" on the payment page."""
    from portal.views import REFERENCE, show_order

    if not REFERENCE.fullmatch(reference):
        raise order_not_found()
    order = orders.get(reference)
    if order.platform != PLATFORM:
        raise order_not_found()
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    return render_cleeng_review(order, cancelled=True)
