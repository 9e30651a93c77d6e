"""Cleeng, as a payment connector (API 3.1): the portal takes Cleeng's payments through Stripe.

Initial purchase: Cleeng's front end creates an order and sends the browser to
`GET /cleeng/checkout?orderId=ID`. The portal reads the order (`GET {base}/orders/{id}`, header
`X-Publisher-Token`), shows it, and takes the payment on Stripe's hosted Checkout, saving the card
to a Stripe Customer kept per Cleeng customer (a `setup` mode session when the order total is 0:
a free trial). After payment the fulfil job reports it, exactly once: `POST {base}/payments` with
`status: captured`, `paymentOperation: initial-payment`, the PaymentIntent (or SetupIntent) as
`externalPaymentId`, and the saved card as `paymentDetails` (its `token` is the Stripe
PaymentMethod id, which Cleeng hands back with every renewal). A failed payment is reported as
`rejected` with `rejectedReason`.

Cleeng-managed recurring billing and refunds arrive as webhooks at `POST /webhooks/cleeng`,
authenticated by an HMAC-SHA256 signature of the raw body, and are stored as jobs before the 200:
- `subscriptionReadyForPaymentAuthorisation`: create the recurring order, authorise the saved card
  off-session with manual capture, report `authorized` (or `rejected`);
- `subscriptionReadyForPaymentCapture`: capture that authorisation for the same period and
  `PATCH` the payment to `captured`; with no authorisation, charge the card at once and report
  `captured` or `rejected`;
- `refundPayment`: refund through Stripe, then `PATCH {base}/payments/{id}` to `refunded`;
- `paymentDetailsDeactivated`: detach the card from its Stripe Customer.

Cleeng answers in an envelope, `{"responseData": {...}, "errors": [...]}`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, current_app, jsonify, redirect, request, url_for
from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from portal import jobs, jsonlimits, outbound, receipts, recurring
from portal.branding.render import render_learner
from portal.checkout import (
    CheckoutError,
    OrderDraft,
    find_order,
    load_order,
    open_order,
    order_not_found,
)
from portal.config import ConfigError, Settings
from portal.db import db
from portal.http import HttpClient, UpstreamError, classify
from portal.i18n import N_
from portal.jobs import PermanentJobError
from portal.models import (
    CleengCustomer,
    CleengPayment,
    CleengPaymentStatus,
    OrderState,
    utcnow,
)
from portal.money import (
    MAX_TIMESTAMP,
    MoneyError,
    exponent,
    normalise_currency,
    plain_decimal,
    to_decimal,
)
from portal.platforms import CheckoutOptions, Outcome, Platform
from portal.stripe_gateway import StripeGateway
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.cleeng")

PLATFORM = "cleeng"
ORDER_ID = re.compile(r"[0-9]{1,20}")  # Cleeng ids are integers; nothing else reaches a URL path
INITIAL = "initial-payment"
RECURRING = "recurring-payment"
AUTHORISATION_TOPIC = "subscriptionReadyForPaymentAuthorisation"
SIGNATURE_HEADER = "X-Cleeng-Signature"
RENEWAL_TOPICS = ("subscriptionReadyForPaymentAuthorisation", "subscriptionReadyForPaymentCapture")
# Webhook topic -> the job kind that handles it. Other topics are acknowledged and ignored.
TOPIC_JOBS = {
    **dict.fromkeys(RENEWAL_TOPICS, "cleeng_renewal"),
    "refundPayment": "cleeng_refund",
    "paymentDetailsDeactivated": "cleeng_detach",
}
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


# --- the API ------------------------------------------------------------------------------------


def _cleeng_id(value) -> int | str:
    """Cleeng's ids are numbers in its JSON; send them back the same way."""
    text = str(value)
    return int(text) if text.isdigit() else text


def _first_error(body) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors or not isinstance(errors, list):
        return ""
    first = errors[0]
    if isinstance(first, dict):
        return str(first.get("message") or first.get("code") or first)
    return str(first)


def _body(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _data(response, what: str) -> dict:
    """`responseData` of a successful answer; an UpstreamError naming Cleeng's first error
    otherwise (408/425/429/5xx may pass, another 4xx will not)."""
    body = _body(response)
    message = _first_error(body)
    if not response.ok:
        error = classify(response, what)
        if message:
            error = UpstreamError(
                f"{error}: {message}", transient=error.transient, status=error.status
            )
        raise error
    if message:
        raise UpstreamError(f"{what}: {message}", transient=False, status=response.status_code)
    data = body.get("responseData")
    if not isinstance(data, dict):
        raise UpstreamError(f"{what}: no responseData", transient=True, status=response.status_code)
    return data


def _already_reported(response) -> bool:
    """Cleeng refuses a second payment for an order: our earlier report went through."""
    if response.status_code == 409:
        return True
    return 400 <= response.status_code < 500 and "already" in _first_error(_body(response)).lower()


class CleengClient:
    def __init__(self, settings: Settings, recorder=None):
        self.base = settings.cleeng_api_base
        self.token = settings.cleeng_publisher_token or ""
        self.http = HttpClient(
            "cleeng",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            recorder=recorder,
        )

    @property
    def configured(self) -> bool:
        return bool(self.token)

    def _request(self, method: str, path: str, *, order_id=None, json_body=None):
        return self.http.request(
            method,
            f"{self.base}{path}",
            json=json_body,
            headers={"X-Publisher-Token": self.token, "Accept": "application/json"},
            order_id=order_id,
        )

    def get_order(self, cleeng_order_id: str, *, order_id=None) -> dict | None:
        """The order, or None when Cleeng does not know it (or no longer keeps it).
        A 403 (another publisher's order) raises UpstreamError with status 403."""
        if not ORDER_ID.fullmatch(cleeng_order_id):
            raise ValueError("not a Cleeng order id")
        response = self._request("GET", f"/orders/{cleeng_order_id}", order_id=order_id)
        if response.status_code in {404, 410}:
            return None
        order = _data(response, "Cleeng order lookup").get("order")
        if not isinstance(order, dict):
            raise UpstreamError("Cleeng order lookup: no order in the answer", transient=True)
        return order

    def create_order(self, fields: dict) -> dict:
        response = self._request("POST", "/orders", json_body=fields)
        order = _data(response, "Cleeng order create").get("order")
        if not isinstance(order, dict) or "id" not in order:
            raise UpstreamError("Cleeng order create: no order in the answer", transient=True)
        return order

    def create_payment(self, fields: dict, *, order_id=None):
        """The raw answer: the caller decides whether "already paid" counts as success."""
        return self._request("POST", "/payments", json_body=fields, order_id=order_id)

    def update_payment(self, payment_id: str, fields: dict, *, order_id=None) -> dict:
        if not ORDER_ID.fullmatch(str(payment_id)):
            raise UpstreamError(f"{payment_id!r} is not a Cleeng payment id", transient=False)
        response = self._request(
            "PATCH", f"/payments/{payment_id}", json_body=fields, order_id=order_id
        )
        return _payment(_data(response, "Cleeng payment update"))


def _payment(data: dict) -> dict:
    """A payment answer: `responseData` is the payment, or holds it under `payment`."""
    payment = data.get("payment")
    return payment if isinstance(payment, dict) else data


# --- amounts and the order ------------------------------------------------------------------------


def _minor(value, currency: str, name: str, *, exact: bool) -> int:
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


def _timestamp(value) -> datetime | None:
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
    total = _minor(order.get("totalPrice"), currency, "totalPrice", exact=True)
    offer = order.get("offer") if isinstance(order.get("offer"), dict) else {}
    discount = order.get("discount") if isinstance(order.get("discount"), dict) else {}
    customer = order.get("customer") if isinstance(order.get("customer"), dict) else {}
    offer_id = str(order.get("offerId") or offer.get("offerId") or "")
    title = offer.get("offerTitle") or offer.get("title") or f"Subscription {offer_id}".strip()
    trial = bool(discount.get("applied")) and discount.get("type") == "trial"
    coupon = order.get("couponCode") or None
    offer_price = _minor(breakdown.get("offerPrice"), currency, "offerPrice", exact=False)
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
            "discount_minor": _minor(
                breakdown.get("discountAmount"), currency, "discountAmount", exact=False
            ),
            "tax_minor": _minor(breakdown.get("taxValue"), currency, "taxValue", exact=False),
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
    offer_price = _minor(breakdown.get("offerPrice"), currency, "offerPrice", exact=False)
    discount = _minor(breakdown.get("discountAmount"), currency, "discountAmount", exact=False)
    tax = _minor(breakdown.get("taxValue"), currency, "taxValue", exact=False)
    if breakdown.get("discountedPrice") is not None:
        discounted = _minor(
            breakdown.get("discountedPrice"), currency, "discountedPrice", exact=False
        )
    else:
        discounted = max(offer_price - discount, 0)
    fees = _minor(
        breakdown.get("customerServiceFee"), currency, "customerServiceFee", exact=False
    ) + _minor(breakdown.get("paymentMethodFee"), currency, "paymentMethodFee", exact=False)
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


# --- webhook signatures ---------------------------------------------------------------------------


def signature(payload: bytes, secret: str) -> str:
    """Hex HMAC-SHA256 of the raw body: Cleeng's webhook verification (name HMAC, hashAlg
    SHA256, the shared secret configured with the webhook subscription)."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signature_valid(payload: bytes, header: str | None, secrets: tuple[str, ...]) -> bool:
    given = (header or "").strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    if not given:
        return False
    given = given.lower()
    return any(hmac.compare_digest(given, signature(payload, secret)) for secret in secrets)


def event_key(event: dict) -> str:
    """Cleeng's events carry no id of their own: a repeat delivery is the same JSON."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"))
    return "cleeng:" + hashlib.sha256(canonical.encode()).hexdigest()


# --- the platform ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Renewal:
    """The fields of a `subscriptionReadyForPayment*` event the portal charges by."""

    subscription_id: str
    customer_id: str
    offer_id: str
    currency: str
    country: str | None
    period: str | None  # the subscription's expirationDate: one charge per period
    payment_details_id: str | None
    token: str | None
    payment_method_id: str | None

    @classmethod
    def from_event(cls, data: dict) -> Renewal:
        missing = [
            name
            for name in ("subscriptionId", "customerId", "offerId", "currency")
            if not data.get(name)
        ]
        if missing:
            raise PermanentJobError(f"Cleeng renewal event without {', '.join(missing)}")
        try:
            currency = normalise_currency(str(data["currency"]))
        except MoneyError as exc:
            raise PermanentJobError(f"Cleeng renewal event: {exc}") from None

        def text(name: str) -> str | None:
            value = data.get(name)
            return None if value is None or value == "" else str(value)

        return cls(
            subscription_id=str(data["subscriptionId"]),
            customer_id=str(data["customerId"]),
            offer_id=str(data["offerId"]),
            currency=currency,
            country=text("paymentCountry") or text("country"),
            period=text("expirationDate"),
            payment_details_id=text("paymentDetailsId"),
            token=text("token"),
            payment_method_id=text("paymentMethodId"),
        )


def _payment_for_order(order_id: int) -> CleengPayment | None:
    with db.reader() as session:
        return session.scalar(
            select(CleengPayment)
            .where(CleengPayment.order_id == order_id, CleengPayment.operation == INITIAL)
            .order_by(CleengPayment.id.desc())
        )


def _save(payment_id: int, **values) -> CleengPayment:
    with db.transaction() as session:
        session.execute(
            update(CleengPayment)
            .where(CleengPayment.id == payment_id)
            .values(updated_at=utcnow(), **values)
        )
    with db.reader() as session:
        return session.get(CleengPayment, payment_id)


def _id_of(value) -> str | None:
    """An expandable Stripe field: an id, or the object it names."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None


class CleengPlatform(Platform):
    name = PLATFORM
    label = "Cleeng"

    def __init__(self, settings: Settings, recorder=None):
        self.settings = settings
        self.client = CleengClient(settings, recorder)
        # The platform charges saved cards itself (renewals), through the same SDK and settings.
        self.stripe = StripeGateway(
            settings.stripe_secret_key,
            settings.stripe_api_base,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=max(settings.http_read_timeout, 30.0),
            recorder=recorder,
        )
        self.return_url = settings.cleeng_return_url
        self.payment_method_id = settings.cleeng_payment_method_id
        if self.return_url:
            _check_return_url(settings, self.return_url)

    # --- the initial purchase -------------------------------------------------------------------

    def refusal(self, order: dict, cleeng_order_id: str) -> CheckoutError | None:
        """Why this Cleeng order cannot be paid here, or None."""
        if str(order.get("id")) != cleeng_order_id:
            return CheckoutError(
                502,
                N_("This order cannot be paid here"),
                N_(
                    "The subscription service sent details we cannot charge. Please contact "
                    "support."
                ),
            )
        method = order.get("paymentMethodId")
        if self.payment_method_id and method is not None and str(method) != self.payment_method_id:
            return CheckoutError(
                403,
                N_("This order cannot be paid here"),
                N_(
                    "It was created for another payment method. Please go back to the "
                    "subscription page and choose how to pay again."
                ),
            )
        expires = _timestamp(order.get("expirationDate"))
        if expires is not None and expires <= datetime.now(UTC):
            return CheckoutError(
                410,
                N_("This order has expired"),
                N_(
                    "Orders can be paid for 24 hours. Please go back to the subscription page "
                    "and choose your plan again; you have not been charged."
                ),
            )
        return None

    def draft(self, order: dict, locale: str | None) -> OrderDraft:
        return draft_from_order(order, locale, self.return_url)

    def checkout_options(self, order) -> CheckoutOptions:
        customer = self._stripe_customer(order)
        free = order.amount_minor == 0  # a free trial: save the card, charge nothing now
        return CheckoutOptions(
            tax_included=True,
            mode="setup" if free else "payment",
            customer=customer,
            setup_future_usage=None if free else "off_session",
            cancel_url=f"{self.settings.public_url}/cleeng/orders/{order.reference}/cancelled",
        )

    def _stripe_customer(self, order) -> str:
        """The Stripe Customer of the order's Cleeng customer, created on their first payment."""
        customer_id = (order.platform_data or {}).get("customer_id")
        if not customer_id:
            raise CheckoutError(
                502,
                N_("This order cannot be paid here"),
                N_("The subscription service sent no customer for it. Please contact support."),
            )
        with db.reader() as session:
            known = session.get(CleengCustomer, customer_id)
        if known is not None:
            return known.stripe_customer_id
        try:
            customer = self.stripe.create_customer(
                f"cleeng-customer-{customer_id}",
                email=order.customer_email,
                metadata={"cleeng_customer_id": customer_id},
            )
        except UpstreamError as exc:
            log.warning("Stripe customer for Cleeng %s: %s", customer_id, exc)
            raise CheckoutError(
                503,
                N_("Payment is temporarily unavailable"),
                N_("We could not reach our payment provider. Please try again in a minute."),
            ) from exc
        with db.transaction() as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            session.execute(
                dialect.insert(CleengCustomer)
                .values(
                    customer_id=customer_id,
                    stripe_customer_id=customer["id"],
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["customer_id"])
            )
        with db.reader() as session:
            return session.get(CleengCustomer, customer_id).stripe_customer_id

    def _saved_card(self, order) -> tuple[dict, str]:
        """The card the learner paid with (or saved, on a free trial), and Stripe's id for the
        payment: the PaymentIntent, or the SetupIntent of a setup-mode session."""
        if order.stripe_payment_intent_id:
            intent = self.stripe.retrieve_payment_intent(
                order.stripe_payment_intent_id, order_id=order.id
            )
            external_id = order.stripe_payment_intent_id
        elif order.stripe_session_id:
            stripe_session = self.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            external_id = _id_of(stripe_session.get("setup_intent"))
            if not external_id:
                raise UpstreamError("Stripe session has no SetupIntent", transient=False)
            intent = self.stripe.retrieve_setup_intent(external_id, order_id=order.id)
        else:
            raise UpstreamError("the order was not paid through Stripe", transient=False)
        method_id = _id_of(intent.get("payment_method"))
        if not method_id:
            raise UpstreamError(f"Stripe {external_id} has no payment method", transient=False)
        return self.stripe.retrieve_payment_method(method_id, order_id=order.id), external_id

    def _report(self, order, fields: dict, what: str) -> tuple[dict, bool]:
        """POST /payments; (the payment, False), or ({}, True) when Cleeng already has one."""
        response = self.client.create_payment(fields, order_id=order.id if order else None)
        if not response.ok and _already_reported(response):
            return {}, True
        return _payment(_data(response, what)), False

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        recorded = _payment_for_order(order.id)
        if recorded is not None and recorded.reported_at is not None:
            return Outcome(redirect_url=None, note="Cleeng payment already reported")
        method, external_id = self._saved_card(order)
        card = method.get("card") or {}
        params = {
            "holderName": (method.get("billing_details") or {}).get("name") or order.customer_name,
            "lastCardFourDigits": card.get("last4"),
            "variant": card.get("brand"),
            "cardExpirationDate": (
                f"{int(card['exp_month']):02d}/{card['exp_year']}"
                if card.get("exp_month") and card.get("exp_year")
                else None
            ),
        }
        fields = {
            "orderId": _cleeng_id(order.platform_ref),
            "status": "captured",
            "paymentOperation": INITIAL,
            "externalPaymentId": external_id,
            "paymentDetails": {
                "token": method["id"],
                "paymentMethodSpecificParams": {k: v for k, v in params.items() if v},
            },
        }
        payment, already = self._report(order, fields, "Cleeng payment")
        self._record_initial(
            order, payment, CleengPaymentStatus.CAPTURED, method["id"], external_id
        )
        note = "Cleeng payment already captured" if already else "Cleeng payment captured"
        return Outcome(
            redirect_url=None,
            note=note,
            detail={
                "payment": payment.get("id"),
                "paymentDetailsId": payment.get("paymentDetailsId"),
            },
        )

    def payment_failed(self, order, reason: str) -> Outcome:
        recorded = _payment_for_order(order.id)
        if recorded is not None and recorded.reported_at is not None:
            return Outcome(redirect_url=None, note="Cleeng payment already reported")
        fields = {
            "orderId": _cleeng_id(order.platform_ref),
            "status": "rejected",
            "paymentOperation": INITIAL,
            "rejectedReason": (reason or "The payment failed.")[:500],
        }
        intent_id = order.stripe_payment_intent_id
        if not intent_id and order.stripe_session_id:
            stripe_session = self.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            intent_id = _id_of(stripe_session.get("payment_intent"))
        if intent_id:
            fields["externalPaymentId"] = intent_id
        payment, already = self._report(order, fields, "Cleeng rejected payment")
        self._record_initial(order, payment, CleengPaymentStatus.REJECTED, None, intent_id)
        return Outcome(
            redirect_url=None,
            note="Cleeng payment already reported" if already else "Cleeng payment rejected",
            detail={"payment": payment.get("id"), "reason": fields["rejectedReason"]},
        )

    def _record_initial(self, order, payment: dict, status, method_id, external_id) -> None:
        values = {
            "operation": INITIAL,
            "order_id": order.id,
            "cleeng_order_id": order.platform_ref,
            "cleeng_payment_id": str(payment["id"]) if payment.get("id") is not None else None,
            "customer_id": (order.platform_data or {}).get("customer_id"),
            "payment_details_id": (
                str(payment["paymentDetailsId"]) if payment.get("paymentDetailsId") else None
            ),
            "stripe_payment_intent_id": external_id,
            "stripe_payment_method_id": method_id,
            "amount_minor": order.amount_paid_minor or 0,
            "currency": order.currency,
            "status": status,
            "rejected_reason": order.failure_reason if status == "rejected" else None,
            "reported_at": utcnow(),
        }
        with db.transaction() as session:
            existing = session.scalar(
                select(CleengPayment).where(
                    CleengPayment.order_id == order.id, CleengPayment.operation == INITIAL
                )
            )
            if existing is None:
                session.add(CleengPayment(**values))
            else:
                for name, value in values.items():
                    if value is not None:
                        setattr(existing, name, value)

    def cancel(self, order) -> Outcome:
        return Outcome(
            redirect_url=order.redirect_url,
            note="nothing to tell Cleeng: an unpaid order expires by itself",
        )

    refund_effects = {  # noqa: RUF012 - read only
        "full": "Cleeng: the payment is reported refunded (refundType refund, the amount).",
        "partial": "Cleeng: the payment is reported refunded for this amount.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """A refund of (part of) an initial payment, whoever made it (the console, Stripe's
        dashboard, a lost dispute): tell Cleeng, as a `refunded` payment update."""
        payment = _payment_for_order(order.id)
        if payment is None or payment.cleeng_payment_id is None:
            raise UpstreamError("no Cleeng payment is recorded for this order", transient=False)
        self._report_refund(payment, amount_minor, "Refunded by the merchant", order_id=order.id)
        return Outcome(
            redirect_url=None,
            note=f"Cleeng payment {payment.cleeng_payment_id} refunded",
            detail={"payment": payment.cleeng_payment_id, "amount_minor": amount_minor},
        )

    # --- renewals, refunds and deactivated cards (webhook jobs) -------------------------------

    def renew(self, data: dict, key: str, topic: str | None = None) -> str:
        """Charge one renewal of a subscription and report it. Each step is recorded before the
        next, so a retried job resumes where it stopped and never charges twice.

        Split authorise and capture, as Cleeng asks where the gateway allows: an authorisation
        event holds the amount on the card (a PaymentIntent with manual capture) and reports
        `authorized`; the capture event for the same period captures that hold and updates the
        payment to `captured`. A capture event with no authorisation charges at once."""
        renewal = Renewal.from_event(data)
        authorise = topic == AUTHORISATION_TOPIC
        if not authorise:
            held = self._authorised_for(renewal)
            if held is not None:
                return self._capture(held, renewal)
        attempt = self._claim_renewal(renewal, key)
        if attempt is None:
            return f"subscription {renewal.subscription_id}: this period is already paid"
        if attempt.reported_at is not None:
            return f"subscription {renewal.subscription_id}: already reported"
        if attempt.status == CleengPaymentStatus.CHARGING:
            # The saved card first: without one there is nothing to charge, and no order to make.
            try:
                method_id = self._saved_method(renewal)
                customer = self._customer_of(renewal, method_id)
            except PermanentJobError:
                _save(attempt.id, renewal_key=None)  # nothing was charged: free the period
                raise
            if attempt.cleeng_order_id is None:
                attempt = self._recurring_order(attempt, renewal)
            attempt = self._charge(attempt, renewal, customer, method_id, authorise=authorise)
        fields = {
            "orderId": _cleeng_id(attempt.cleeng_order_id),
            "status": attempt.status,
            "paymentOperation": RECURRING,
            "subscriptionId": _cleeng_id(renewal.subscription_id),
        }
        if attempt.stripe_payment_intent_id:
            fields["externalPaymentId"] = attempt.stripe_payment_intent_id
        if renewal.payment_details_id:
            fields["paymentDetailsId"] = _cleeng_id(renewal.payment_details_id)
        if attempt.status == CleengPaymentStatus.REJECTED:
            fields["rejectedReason"] = attempt.rejected_reason or "The payment was declined."
        payment, _already = self._report(None, fields, "Cleeng recurring payment")
        _save(
            attempt.id,
            cleeng_payment_id=str(payment["id"]) if payment.get("id") is not None else None,
            reported_at=utcnow(),
        )
        return f"subscription {renewal.subscription_id}: {attempt.status}"

    def _claim_renewal(self, renewal: Renewal, key: str) -> CleengPayment | None:
        """This delivery's attempt; None if another delivery already captured the same period
        (an authorisation and a capture event for one renewal: one charge)."""
        with db.reader() as session:
            mine = session.scalar(select(CleengPayment).where(CleengPayment.event_key == key))
        if mine is not None:
            return mine
        renewal_key = f"{renewal.subscription_id}:{renewal.period}" if renewal.period else None
        try:
            with db.transaction() as session:
                attempt = CleengPayment(
                    operation=RECURRING,
                    event_key=key,
                    renewal_key=renewal_key,
                    subscription_id=renewal.subscription_id,
                    customer_id=renewal.customer_id,
                    period=renewal.period,
                    payment_details_id=renewal.payment_details_id,
                    status=CleengPaymentStatus.CHARGING,
                )
                session.add(attempt)
                session.flush()
            return attempt
        except IntegrityError:
            pass
        with db.reader() as session:
            mine = session.scalar(select(CleengPayment).where(CleengPayment.event_key == key))
            holder = session.scalar(
                select(CleengPayment).where(CleengPayment.renewal_key == renewal_key)
            )
        if mine is not None:
            return mine
        if holder is not None and holder.status == CleengPaymentStatus.CAPTURED:
            return None
        raise UpstreamError(
            f"another charge for subscription {renewal.subscription_id} is under way",
            transient=True,
        )

    def _saved_method(self, renewal: Renewal) -> str:
        if renewal.token and renewal.token.startswith("pm_"):
            return renewal.token
        if renewal.payment_details_id:
            with db.reader() as session:
                method = session.scalar(
                    select(CleengPayment.stripe_payment_method_id)
                    .where(
                        CleengPayment.payment_details_id == renewal.payment_details_id,
                        CleengPayment.stripe_payment_method_id.is_not(None),
                    )
                    .order_by(CleengPayment.id.desc())
                )
            if method:
                return method
        raise PermanentJobError(
            f"no saved Stripe card for Cleeng subscription {renewal.subscription_id}"
        )

    def _customer_of(self, renewal: Renewal, method_id: str) -> str:
        with db.reader() as session:
            known = session.get(CleengCustomer, renewal.customer_id)
        if known is not None:
            return known.stripe_customer_id
        customer = _id_of(self.stripe.retrieve_payment_method(method_id).get("customer"))
        if not customer:
            raise PermanentJobError(f"Stripe payment method {method_id} has no customer")
        return customer

    def _recurring_order(self, attempt: CleengPayment, renewal: Renewal) -> CleengPayment:
        """`POST /orders` for the renewal; its total is what the card is charged."""
        fields = {
            "customerId": _cleeng_id(renewal.customer_id),
            "offerId": renewal.offer_id,
            "currency": renewal.currency,
            "paymentOperation": RECURRING,
            "subscriptionId": _cleeng_id(renewal.subscription_id),
        }
        if renewal.country:
            fields["country"] = renewal.country
        method = renewal.payment_method_id or self.payment_method_id
        if method:
            fields["paymentMethodId"] = _cleeng_id(method)
        order = self.client.create_order(fields)
        try:
            currency = normalise_currency(str(order.get("currency") or renewal.currency))
            amount = _minor(order.get("totalPrice"), currency, "totalPrice", exact=True)
        except (MoneyError, UpstreamError) as exc:
            raise PermanentJobError(f"Cleeng recurring order {order['id']}: {exc}") from None
        return _save(
            attempt.id, cleeng_order_id=str(order["id"]), amount_minor=amount, currency=currency
        )

    def _authorised_for(self, renewal: Renewal) -> CleengPayment | None:
        """The authorisation held for this subscription period, if one is waiting for capture."""
        if not renewal.period:
            return None
        with db.reader() as session:
            held = session.scalar(
                select(CleengPayment).where(
                    CleengPayment.renewal_key == f"{renewal.subscription_id}:{renewal.period}"
                )
            )
        if held is None or held.stripe_payment_intent_id is None:
            return None
        if held.status == CleengPaymentStatus.AUTHORISED or (
            held.status == CleengPaymentStatus.CAPTURED
            and held.cleeng_payment_id is not None
            and held.reported_at is None
        ):
            return held
        return None

    def _capture(self, held: CleengPayment, renewal: Renewal) -> str:
        """Capture the period's authorisation at Stripe, then `PATCH` Cleeng's payment to
        `captured` (or `rejected` when the hold is gone: expired or voided at Stripe; Cleeng's
        dunning then sends a new capture, which charges at once). Recorded step by step."""
        if held.reported_at is None and held.status == CleengPaymentStatus.AUTHORISED:
            # Stripe holds the money but Cleeng has not heard of the authorisation yet: its own
            # job reports it first, and this capture is retried after.
            raise UpstreamError(
                f"subscription {renewal.subscription_id}: the authorisation is not reported yet",
                transient=True,
            )
        if held.status == CleengPaymentStatus.AUTHORISED:
            try:
                self.stripe.capture_payment_intent(
                    held.stripe_payment_intent_id,
                    f"cleeng-capture-{held.stripe_payment_intent_id}",
                )
            except UpstreamError as exc:
                if exc.transient:
                    raise
                held = _save(
                    held.id,
                    status=CleengPaymentStatus.REJECTED,
                    renewal_key=None,  # the period is free for Cleeng's next attempt
                    rejected_reason=f"The authorisation could not be captured: {exc}"[:500],
                    reported_at=None,
                )
            else:
                held = _save(held.id, status=CleengPaymentStatus.CAPTURED, reported_at=None)
        fields = {"status": held.status, "externalPaymentId": held.stripe_payment_intent_id}
        if held.status == CleengPaymentStatus.REJECTED:
            fields["rejectedReason"] = held.rejected_reason or "The authorisation expired."
        self.client.update_payment(held.cleeng_payment_id, fields)
        _save(held.id, reported_at=utcnow())
        return f"subscription {renewal.subscription_id}: authorisation {held.status}"

    def _charge(
        self,
        attempt: CleengPayment,
        renewal: Renewal,
        customer: str,
        method_id: str,
        *,
        authorise: bool = False,
    ) -> CleengPayment:
        charge = self.stripe.charge_saved_card(
            customer=customer,
            payment_method=method_id,
            amount_minor=attempt.amount_minor,
            currency=attempt.currency,
            # One charge per subscription period and attempt: a repeat of this attempt is the
            # same charge; a dunning retry after a decline is a new attempt (a new row).
            idempotency_key=(
                f"cleeng-renewal-{renewal.subscription_id}-{renewal.period or _key_tail(attempt)}"
                f"-{attempt.id}"
            ),
            description=f"Cleeng subscription {renewal.subscription_id} renewal",
            metadata={
                "cleeng_subscription_id": renewal.subscription_id,
                "cleeng_order_id": attempt.cleeng_order_id,
                "cleeng_customer_id": renewal.customer_id,
            },
            capture_method="manual" if authorise else None,
        )
        if authorise and charge.authorised:
            return _save(
                attempt.id,
                status=CleengPaymentStatus.AUTHORISED,
                stripe_payment_intent_id=charge.payment_intent_id,
                stripe_payment_method_id=method_id,
            )
        if charge.succeeded:
            return _save(
                attempt.id,
                status=CleengPaymentStatus.CAPTURED,
                stripe_payment_intent_id=charge.payment_intent_id,
                stripe_payment_method_id=method_id,
            )
        if charge.status != "declined":
            raise PermanentJobError(
                f"Stripe left renewal charge {charge.payment_intent_id} {charge.status}"
            )
        log.info(
            "Cleeng subscription %s renewal declined: %s",
            renewal.subscription_id,
            charge.message,
        )
        # A decline frees the period for Cleeng's next dunning attempt.
        return _save(
            attempt.id,
            status=CleengPaymentStatus.REJECTED,
            renewal_key=None,
            stripe_payment_intent_id=charge.payment_intent_id,
            stripe_payment_method_id=method_id,
            rejected_reason=charge.message,
        )

    def refund_payment(self, data: dict, key: str) -> str:
        """Cleeng asks for a refund: money back through Stripe first, then tell Cleeng."""
        payment_id = data.get("paymentId")
        external_id = data.get("externalPaymentId")
        with db.reader() as session:
            payment = None
            if payment_id is not None:
                payment = session.scalar(
                    select(CleengPayment).where(CleengPayment.cleeng_payment_id == str(payment_id))
                )
            if payment is None and external_id:
                payment = session.scalar(
                    select(CleengPayment).where(
                        CleengPayment.stripe_payment_intent_id == str(external_id)
                    )
                )
        if payment is None:
            raise PermanentJobError(f"Cleeng asks to refund payment {payment_id}, unknown here")
        if payment.cleeng_payment_id is None and payment_id is not None:
            payment = _save(payment.id, cleeng_payment_id=str(payment_id))
        remaining = (payment.amount_minor or 0) - (payment.amount_refunded_minor or 0)
        amount = remaining
        if data.get("amount") is not None:
            try:
                amount = _minor(data["amount"], payment.currency, "amount", exact=True)
            except UpstreamError as exc:
                raise PermanentJobError(str(exc)) from None
        if amount > remaining:
            raise PermanentJobError(
                f"Cleeng asks to refund {amount} of payment {payment_id}; {remaining} is left"
            )
        reason = str(data.get("refundedReason") or data.get("reason") or "Refunded in Cleeng")
        intent = payment.stripe_payment_intent_id or ""
        if amount > 0 and intent.startswith("pi_"):
            self.stripe.refund(
                intent,
                amount,
                f"cleeng-refund-{key.removeprefix('cleeng:')[:40]}",
                order_id=payment.order_id,
                # Cleeng asked: its charge.refunded must not report the refund back to it.
                metadata={
                    "cleeng_payment_id": payment.cleeng_payment_id or "",
                    "portal_platform_told": "1",
                },
            )
        self._report_refund(payment, amount, reason, order_id=payment.order_id)
        return f"payment {payment.cleeng_payment_id} refunded"

    def _report_refund(self, payment: CleengPayment, amount_minor: int, reason: str, *, order_id):
        fields = {
            "orderId": _cleeng_id(payment.cleeng_order_id),
            "status": "refunded",
            "paymentOperation": payment.operation,
            "refundedReason": reason[:500],
            "amount": float(to_decimal(amount_minor, payment.currency)),
            "refundType": "refund",
        }
        if payment.stripe_payment_intent_id:
            fields["externalPaymentId"] = payment.stripe_payment_intent_id
        self.client.update_payment(payment.cleeng_payment_id, fields, order_id=order_id)
        refunded = (payment.amount_refunded_minor or 0) + amount_minor
        _save(
            payment.id,
            amount_refunded_minor=refunded,
            status=(
                CleengPaymentStatus.REFUNDED
                if refunded >= (payment.amount_minor or 0)
                else payment.status
            ),
        )

    def deactivate_payment_details(self, data: dict) -> str:
        """Cleeng deactivated a customer's payment details: the card leaves its Customer."""
        token = str(data.get("token") or "")
        details_id = data.get("paymentDetailsId")
        method_id = token if token.startswith("pm_") else None
        if method_id is None and details_id is not None:
            with db.reader() as session:
                method_id = session.scalar(
                    select(CleengPayment.stripe_payment_method_id)
                    .where(
                        CleengPayment.payment_details_id == str(details_id),
                        CleengPayment.stripe_payment_method_id.is_not(None),
                    )
                    .order_by(CleengPayment.id.desc())
                )
        if not method_id:
            return f"payment details {details_id}: no Stripe card known here"
        method = self.stripe.retrieve_payment_method(method_id)
        if not method.get("customer"):
            return f"{method_id} was already detached"
        self.stripe.detach_payment_method(method_id)
        return f"{method_id} detached"


def _key_tail(attempt: CleengPayment) -> str:
    """A stand-in for the period when Cleeng sent none: this delivery's own key."""
    return (attempt.event_key or "").removeprefix("cleeng:")[:16]


def _check_return_url(settings: Settings, url: str) -> None:
    try:
        host = check_url(url, allow_http="always").host
    except UnsafeUrl as exc:
        raise ConfigError(f"PORTAL_CLEENG_RETURN_URL is refused: {exc}") from None
    parts = urlsplit(url)
    allowed = set(settings.redirect_hosts)
    if settings.sandbox:
        allowed.add((urlsplit(settings.public_url).hostname or "").lower())
    if host not in allowed:
        raise ConfigError(
            f"PORTAL_CLEENG_RETURN_URL points to {host!r}, which is not in PORTAL_REDIRECT_HOSTS"
        )
    if parts.scheme != "https" and host not in LOCAL_HOSTS:
        raise ConfigError("PORTAL_CLEENG_RETURN_URL must be https")


# --- jobs -----------------------------------------------------------------------------------------


def _platform(services) -> CleengPlatform:
    return services.platform(PLATFORM)


def run_renewal(services, job) -> None:
    outcome = _platform(services).renew(
        job.payload["data"], job.dedupe_key, job.payload.get("topic")
    )
    log.info("Cleeng %s: %s", job.payload.get("topic"), outcome)


def run_refund(services, job) -> None:
    outcome = _platform(services).refund_payment(job.payload["data"], job.dedupe_key)
    log.info("Cleeng refundPayment: %s", outcome)


def run_detach(services, job) -> None:
    outcome = _platform(services).deactivate_payment_details(job.payload["data"])
    log.info("Cleeng paymentDetailsDeactivated: %s", outcome)


def give_up_event(services, job, error: str) -> None:
    """A Cleeng event could not be handled: an operator must look (money may have moved)."""
    data = job.payload.get("data") or {}
    with db.reader() as session:
        attempt = session.scalar(
            select(CleengPayment).where(CleengPayment.event_key == job.dedupe_key)
        )
    charged = attempt.stripe_payment_intent_id if attempt is not None else None
    message = (
        f"Cleeng {job.payload.get('topic')} (subscription {data.get('subscriptionId')}, payment "
        f"{data.get('paymentId')}) failed after {job.attempts} attempts: {error}"
        + (f"; Stripe payment {charged} is not reported to Cleeng" if charged else "")
    )
    log.error("ALERT %s", message)
    url = services.settings.alert_webhook_url
    if url:
        try:
            outbound.post(
                services.settings,
                url,
                json={"text": f"Checkout portal: {message}", "platform": PLATFORM},
                timeout=(3.05, 10),
            )
        except Exception:  # noqa: BLE001 - the log line above already carries the alert
            log.exception("alert webhook failed")


jobs.register("cleeng_renewal", run_renewal, give_up=give_up_event)
jobs.register("cleeng_refund", run_refund, give_up=give_up_event)
jobs.register("cleeng_detach", run_detach, give_up=give_up_event)


# --- the entry URL and the webhook ----------------------------------------------------------------

bp = Blueprint("cleeng", __name__)


def render_cleeng_review(order, *, cancelled: bool = False, status: int = 200):
    """The review page of a Cleeng order, through `render_learner` like every learner page: the
    brand assigned to Cleeng, the learner's language, and a marketer's published override of
    `cleeng/review.html` (the default if it fails). `data` is Cleeng's own price breakdown, as
    plain values."""
    from portal.views import learner_locale

    return (
        render_learner(
            "cleeng/review.html",
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


OFFER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
COUPON = re.compile(r"[A-Za-z0-9_-]{1,64}")
OFFER_LINK_MAX_SECONDS = 7 * 86400  # a signed link lives at most a week
OFFER_LINK_FIELDS = ("offerId", "customerId", "couponCode", "currency", "country", "expires")
COUNTRY = re.compile(r"[A-Z]{2}")


def offer_link_signature(params: dict, secret: str) -> str:
    """The publisher's signature of an offer link: hex HMAC-SHA256, keyed with
    `PORTAL_CLEENG_OFFER_LINK_SECRET`, of `offerId`, `customerId`, `couponCode`, `currency`,
    `country` (each empty when not given) and `expires` (Unix seconds), joined by newlines in
    that order."""
    message = "\n".join(str(params.get(name) or "") for name in OFFER_LINK_FIELDS)
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _known_currency(code: str) -> bool:
    try:
        return normalise_currency(code) == code
    except MoneyError:
        return False


def _offer_link_refused() -> CheckoutError:
    return CheckoutError(
        400,
        N_("This checkout link is not valid"),
        N_(
            "The link that brought you here is incomplete, damaged or too old. Please go back to "
            "the subscription page and choose your plan again."
        ),
    )


def _unavailable() -> CheckoutError:
    """Cleeng could not be reached (or answered 5xx) while loading or creating an order."""
    return CheckoutError(
        503,
        N_("Checkout is temporarily unavailable"),
        N_(
            "We could not load your order from the subscription service. Please try again "
            "in a few minutes; you have not been charged."
        ),
    )


def _order_from_offer(platform: CleengPlatform, settings: Settings) -> str:
    """The opt-in entry `?offerId=&customerId=[&couponCode=]&expires=&signature=`: a link the
    publisher's server signed. The portal creates the Cleeng order (`POST /3.1/orders`) and
    returns its id; every price still comes from Cleeng's answer, never from the link."""
    secrets = settings.cleeng_offer_link_secret
    if not secrets:
        raise CheckoutError(
            404,
            N_("Order not found"),
            N_(
                "We could not find this order. Please go back to the subscription page and "
                "choose your plan again."
            ),
        )
    args = request.args
    params = {name: args.get(name, "") for name in OFFER_LINK_FIELDS}
    given = args.get("signature", "").lower()
    now = int(utcnow().timestamp())
    if (
        not OFFER_ID.fullmatch(params["offerId"])
        or not ORDER_ID.fullmatch(params["customerId"])
        or (params["couponCode"] and not COUPON.fullmatch(params["couponCode"]))
        or (params["currency"] and not _known_currency(params["currency"]))
        or (params["country"] and not COUNTRY.fullmatch(params["country"]))
        or not (params["expires"].isascii() and params["expires"].isdigit())
        or len(params["expires"]) > 12
        or not now < int(params["expires"]) <= now + OFFER_LINK_MAX_SECONDS
        or not given
        or not any(
            hmac.compare_digest(given, offer_link_signature(params, secret)) for secret in secrets
        )
    ):
        raise _offer_link_refused()
    fields = {"customerId": _cleeng_id(params["customerId"]), "offerId": params["offerId"]}
    if platform.payment_method_id:
        fields["paymentMethodId"] = _cleeng_id(platform.payment_method_id)
    for name in ("couponCode", "currency", "country"):
        if params[name]:
            fields[name] = params[name]
    try:
        order = platform.client.create_order(fields)
    except UpstreamError as exc:
        if exc.status in {404, 422}:
            log.warning("Cleeng refused an order for offer %s: %s", params["offerId"], exc)
            raise CheckoutError(
                404,
                N_("This offer is not available"),
                N_(
                    "The subscription service does not offer this plan to you. Please go back "
                    "to the subscription page and choose your plan again."
                ),
            ) from exc
        log.error("Cleeng order for offer %s could not be created: %s", params["offerId"], exc)
        raise _unavailable() from exc
    return str(order["id"])


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
        created = _order_from_offer(platform, services().settings)
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
    existing = find_order(PLATFORM, cleeng_order_id)
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
        raise _unavailable() from exc
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
    order = load_order(reference)
    if order.platform != PLATFORM:
        raise order_not_found()
    if order.is_paid or order.state in {OrderState.PROCESSING, OrderState.CANCELLED}:
        return show_order(order)
    return render_cleeng_review(order, cancelled=True)


def _refused(status: int, code: str, message: str):
    return jsonify(error={"code": code, "message": message}), status


@bp.post("/webhooks/cleeng")
def webhook():
    """Cleeng's webhooks: the signature first, then each event stored as a job (once) before
    the 200, since Cleeng delivers again until it gets one."""
    from portal.views import services
    from portal.webhooks import DATABASE_UNAVAILABLE

    settings = services().settings
    secrets = settings.cleeng_webhook_secret
    if not secrets:
        log.error("Cleeng webhook refused: PORTAL_CLEENG_WEBHOOK_SECRET is not set")
        return _refused(503, "not_configured", "webhooks are not set up")
    payload = request.get_data(cache=False)
    if not signature_valid(payload, request.headers.get(SIGNATURE_HEADER), secrets):
        log.warning("Cleeng webhook refused: missing or bad signature")
        return _refused(401, "bad_signature", "invalid signature")
    try:
        event = jsonlimits.loads(payload)
    except ValueError:
        event = None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("topic"), str)
        or not isinstance(event.get("data"), dict)
    ):
        return _refused(400, "bad_event", "expected a JSON object with topic and data")
    topic, data = event["topic"], event["data"]
    kind = TOPIC_JOBS.get(topic)
    if kind is None:
        log.info("Cleeng webhook %s ignored: topic not handled", topic)
        return jsonify(received=True, outcome="ignored: topic not handled")
    ours = settings.cleeng_payment_method_id
    method = data.get("paymentMethodId")
    if ours and method is not None and str(method) != ours:
        # Cleeng sends every connector's events unless the subscription filters them.
        return jsonify(received=True, outcome="ignored: another payment method")
    key = event_key(event)
    try:
        duplicate = jobs.job_state(key) is not None
        if not duplicate:
            with db.transaction() as session:
                jobs.enqueue(
                    session,
                    kind,
                    key,
                    payload={
                        "topic": topic,
                        "broadcasterId": event.get("broadcasterId"),
                        "data": data,
                    },
                )
    except DATABASE_UNAVAILABLE:
        log.exception("Cleeng webhook %s: database unavailable", topic)
        return _refused(503, "unavailable", "try again")
    log.info("Cleeng webhook %s queued%s", topic, " (duplicate)" if duplicate else "")
    return jsonify(received=True, duplicate=duplicate, outcome=f"queued: {kind}")
