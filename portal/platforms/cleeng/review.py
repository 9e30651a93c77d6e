"""Cleeng's review page: its offer, renewal period and tax-included breakdown
(`cleeng/review.html`)."""

from __future__ import annotations

from flask import current_app

from portal import receipts, recurring
from portal.branding.render import render_learner
from portal.models import utcnow

REVIEW_TEMPLATE = "cleeng/review.html"  # the name marketers' overrides use


def render_cleeng_review(order, *, cancelled: bool = False, status: int = 200):
    """The review page of a Cleeng order, through `render_learner` like every learner page: the
    brand assigned to Cleeng, the learner's language, and a marketer's published override of
    `cleeng/review.html` (the default if it fails). `data` is Cleeng's own price breakdown, as
    plain values."""
    from portal.views import learner_locale

    return (
        render_learner(
            REVIEW_TEMPLATE,
            order=order,
            locale=order.locale or learner_locale(),
            data=review_data(order.platform_data or {}),
            cancelled=cancelled,
            receipt_by=receipts.sender(current_app.config["PORTAL"], order),
        ),
        status,
    )


def review_data(platform_data: dict, today=None) -> dict:
    """What the Cleeng review page reads of the order's platform data: the offer's period,
    Cleeng's price breakdown (tax added or included, as Cleeng's figures add up), how the
    discount came about, and what the subscription costs after today (`recurring`: the renewal
    price and the first date it is charged, from `today`, the learner's day). Every key is always
    there (strict templates), with None for what Cleeng did not send."""
    return {
        "period": platform_data.get("period") or None,
        "offer_id": platform_data.get("offer_id") or None,
        "country": platform_data.get("country") or None,
        "offer_price_minor": platform_data.get("offer_price_minor"),
        "discount_minor": platform_data.get("discount_minor") or 0,
        "tax_minor": platform_data.get("tax_minor") or 0,
        "tax_percent": platform_data.get("tax_percent") or None,
        "trial": bool(platform_data.get("trial")),
        "discount_type": platform_data.get("discount_type") or None,
        "coupon_code": platform_data.get("coupon_code") or None,
        # Cleeng adds tax to its (net) offer price; an order whose total holds it says so.
        "tax_added": platform_data.get("tax_added", True) is not False,
        "fees_minor": platform_data.get("fees_minor") or 0,
        "recurring": recurring.terms(platform_data.get("recurring"), today or utcnow().date()),
    }
