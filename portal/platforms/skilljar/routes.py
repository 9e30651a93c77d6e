"""Skilljar's Remote Checkout URL: `GET /skilljar/checkout?purchase_id=ID`."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from portal import orders
from portal.checkout import CheckoutError, open_order
from portal.http import UpstreamError
from portal.i18n import N_
from portal.platforms.skilljar.client import PAYABLE_STATE, PURCHASE_ID, draft_from_purchase
from portal.platforms.skilljar.platform import SkilljarPlatform

bp = Blueprint("skilljar", __name__)


@bp.get("/checkout")
def checkout():
    """Skilljar's Remote Checkout URL: `?purchase_id=ID`."""
    from portal.views import learner_locale, render_review, services, show_order

    purchase_id = request.args.get("purchase_id", "")
    if not PURCHASE_ID.fullmatch(purchase_id):
        raise CheckoutError(
            400,
            N_("This checkout link is not valid"),
            N_(
                "The link that brought you here is incomplete or damaged. Please go back to the "
                "course page and choose “Proceed to Checkout” again."
            ),
        )
    existing = orders.find("skilljar", purchase_id)
    if existing is not None and (existing.is_paid or existing.state == "processing"):
        return show_order(existing)
    platform: SkilljarPlatform = services().platform("skilljar")
    try:
        purchase = platform.client.get_purchase(
            purchase_id, order_id=existing.id if existing else None
        )
    except UpstreamError as exc:
        current_app.logger.error("Skilljar purchase %s could not be loaded: %s", purchase_id, exc)
        raise CheckoutError(
            503,
            N_("Checkout is temporarily unavailable"),
            N_(
                "We could not load your purchase from the course platform. Please try again in a "
                "few minutes; you have not been charged."
            ),
        ) from exc
    if purchase is None:
        raise CheckoutError(
            404,
            N_("Purchase not found"),
            N_(
                "We could not find this purchase. Please go back to the course page and start the "
                "checkout again."
            ),
        )
    if purchase.get("state") != PAYABLE_STATE:
        raise CheckoutError(
            409,
            N_("This purchase can no longer be paid"),
            N_(
                "This purchase has already been completed or cancelled. Please go back to the "
                "course page; if you have paid, your enrolment is on its way."
            ),
        )
    try:
        draft = draft_from_purchase(purchase, learner_locale())
    except UpstreamError as exc:
        current_app.logger.error("Skilljar purchase %s is malformed: %s", purchase_id, exc)
        raise CheckoutError(
            502,
            N_("This purchase cannot be paid here"),
            N_("The course platform sent details we cannot charge. Please contact support."),
        ) from exc
    order = open_order(draft, existing)
    if order.is_paid:
        return show_order(order)
    return render_review(order)
