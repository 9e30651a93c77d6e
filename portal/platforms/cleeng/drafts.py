"""What a Cleeng order becomes: the portal's order draft, its amounts in minor units and Cleeng's
price breakdown (tax added to the offer price, or included in it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode, urlsplit

from portal import recurring
from portal.checkout import (
    OrderDraft,
)
from portal.http import UpstreamError
from portal.money import (
    MAX_TIMESTAMP,
    MoneyError,
    exponent,
    normalise_currency,
    plain_decimal,
)
from portal.platforms.cleeng.client import ORDER_ID, PLATFORM


def minor_amount(value, currency: str, name: str, *, exact: bool) -> int:
    """A Cleeng decimal amount in minor units. What is charged must be `exact` in the currency's
    minor unit; display-only figures (tax, discount) are rounded half-up."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UpstreamError(f"Cleeng order has an invalid {name}", transient=False)
    try:
        amount = plain_decimal(value)  # ASCII digits, bounded: never 1e308 or another script
    except MoneyError:
        raise UpstreamError(f"Cleeng order has an invalid {name}", transient=False) from None
    scaled = amount.scaleb(exponent(currency))
    if exact and scaled != scaled.to_integral_value():
        raise UpstreamError(
            f"Cleeng order {name} {value} has more decimals than {currency} allows",
            transient=False,
        )
    return int(scaled.quantize(Decimal(1), ROUND_HALF_UP))


def _percent(rate) -> str | None:
    """Cleeng's `taxRate` is a fraction (0.21): as a percentage for display ("21")."""
    if rate is None or isinstance(rate, bool):
        return None
    try:
        percent = (plain_decimal(rate) * 100).normalize()
    except MoneyError:
        return None
    return f"{percent:f}" if percent.is_finite() and percent >= 0 else None


def timestamp(value) -> datetime | None:
    """`expirationDate`: Unix seconds (or an ISO 8601 text)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC) if 0 <= value <= MAX_TIMESTAMP else None
    if isinstance(value, str) and value.strip():
        text = value.strip()
        if text.isascii() and text.isdigit():
            seconds = int(text[:20])
            return datetime.fromtimestamp(seconds, UTC) if seconds <= MAX_TIMESTAMP else None
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _return_url(base: str | None, cleeng_order_id: str) -> str | None:
    if not base:
        return None
    separator = "&" if urlsplit(base).query else "?"
    return f"{base}{separator}{urlencode({'orderId': cleeng_order_id})}"


def draft_from_order(order: dict, locale: str | None, return_url: str | None) -> OrderDraft:
    """Map a Cleeng order onto ours. Cleeng's `totalPrice` is what is charged, tax included;
    the breakdown (offer price before tax, discount, tax) is kept for the review page."""
    try:
        currency = normalise_currency(str(order.get("currency") or ""))
    except MoneyError:
        raise UpstreamError("Cleeng order has an unknown currency", transient=False) from None
    customer_id = order.get("customerId")
    if customer_id is None or not ORDER_ID.fullmatch(str(customer_id)):
        raise UpstreamError("Cleeng order has no customerId", transient=False)
    if "totalPrice" not in order:
        raise UpstreamError("Cleeng order has no totalPrice", transient=False)
    breakdown = order.get("priceBreakdown") or {}
    if not isinstance(breakdown, dict):
        raise UpstreamError("Cleeng order has an invalid priceBreakdown", transient=False)
    total = minor_amount(order.get("totalPrice"), currency, "totalPrice", exact=True)
    offer = order.get("offer") if isinstance(order.get("offer"), dict) else {}
    discount = order.get("discount") if isinstance(order.get("discount"), dict) else {}
    customer = order.get("customer") if isinstance(order.get("customer"), dict) else {}
    offer_id = str(order.get("offerId") or offer.get("offerId") or "")
    title = offer.get("offerTitle") or offer.get("title") or f"Subscription {offer_id}".strip()
    trial = bool(discount.get("applied")) and discount.get("type") == "trial"
    coupon = order.get("couponCode") or None
    offer_price = minor_amount(breakdown.get("offerPrice"), currency, "offerPrice", exact=False)
    prices = _breakdown(order, breakdown, currency, total)
    return OrderDraft(
        platform=PLATFORM,
        platform_ref=str(order["id"]),
        description=str(title).strip(),
        sku=offer_id or None,
        currency=currency,
        amount_minor=total,
        list_unit_minor=offer_price if "offerPrice" in breakdown else None,
        promo_code=str(coupon) if coupon else None,
        customer_email=customer.get("email") or None,
        locale=locale,
        redirect_url=_return_url(return_url, str(order["id"])),
        platform_data={
            "cleeng_order_id": str(order["id"]),
            "customer_id": str(customer_id),
            "offer_id": offer_id or None,
            "period": offer.get("period") or None,
            "country": order.get("country") or None,
            "payment_method_id": order.get("paymentMethodId"),
            "offer_price_minor": offer_price,
            "discount_minor": minor_amount(
                breakdown.get("discountAmount"), currency, "discountAmount", exact=False
            ),
            "tax_minor": minor_amount(breakdown.get("taxValue"), currency, "taxValue", exact=False),
            "tax_percent": _percent(order.get("taxRate")),
            "trial": trial,
            "discount_type": discount.get("type") if discount.get("applied") else None,
            "coupon_code": str(coupon) if coupon else None,
            **prices,
        },
    )


def _breakdown(order: dict, breakdown: dict, currency: str, total: int) -> dict:
    """The rest of Cleeng's breakdown for the review page, and what the subscription costs after
    today. Cleeng prices offers before tax (`offerPrice`, `discountedPrice`) and adds `taxValue`
    and its fees to make `totalPrice`; an order whose total already holds the tax (the total is
    the discounted price and fees) says so, and the page labels the tax "included". Whichever
    Cleeng's figures add up to is what the page shows: the lines add up as labelled."""
    offer_price = minor_amount(breakdown.get("offerPrice"), currency, "offerPrice", exact=False)
    discount = minor_amount(
        breakdown.get("discountAmount"), currency, "discountAmount", exact=False
    )
    tax = minor_amount(breakdown.get("taxValue"), currency, "taxValue", exact=False)
    if breakdown.get("discountedPrice") is not None:
        discounted = minor_amount(
            breakdown.get("discountedPrice"), currency, "discountedPrice", exact=False
        )
    else:
        discounted = max(offer_price - discount, 0)
    fees = minor_amount(
        breakdown.get("customerServiceFee"), currency, "customerServiceFee", exact=False
    ) + minor_amount(breakdown.get("paymentMethodFee"), currency, "paymentMethodFee", exact=False)
    tax_added = not (tax and discounted + fees == total)
    offer = order.get("offer") if isinstance(order.get("offer"), dict) else {}
    discount_info = order.get("discount") if isinstance(order.get("discount"), dict) else {}
    applied = bool(discount_info.get("applied"))
    kind = discount_info.get("type") if applied else None
    periods = _small_int(discount_info.get("periods")) if applied else 0
    renewal = _renewal_minor(order, breakdown, currency, discounted, tax, tax_added)
    plan = recurring.plan(
        amount_minor=renewal,
        period=offer.get("period"),
        trial_days=_small_int(offer.get("freeDays")) if kind == "trial" else None,
        trial_periods=(periods or 1) if kind == "trial" else None,
    )
    if plan is not None and kind not in (None, "trial") and periods > 1:
        plan["discounted_periods"] = periods  # the discounted price is charged this many times
    return {
        "discounted_minor": discounted,
        "fees_minor": fees,
        "tax_added": tax_added,
        "recurring": plan,
    }


def _small_int(value) -> int:
    """Cleeng's counts (`freeDays`, `discount.periods`) come as numbers or digit strings."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value if 0 <= value <= 100_000 else 0
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 6:
        return int(value)
    return 0


def _renewal_minor(order, breakdown, currency, discounted, tax, tax_added) -> int | None:
    """What each renewal charges, tax included: the offer price before any discount, plus tax at
    Cleeng's `taxRate` when Cleeng adds tax (or at the rate its own figures show). None when
    Cleeng's answer does not say."""
    if "offerPrice" not in breakdown:
        return None
    net = plain_decimal(breakdown.get("offerPrice")).scaleb(exponent(currency))
    if not tax_added:
        return int(net.quantize(Decimal(1), ROUND_HALF_UP))
    rate = _rate(order.get("taxRate"))
    if rate is None and discounted:
        rate = Decimal(tax) / Decimal(discounted)
    if rate is None:
        return None  # no rate, and nothing charged today to see it from (a trial)
    return int((net * (1 + rate)).quantize(Decimal(1), ROUND_HALF_UP))


def _rate(value) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        rate = plain_decimal(value)
    except MoneyError:
        return None
    return rate if rate < 1 else None
