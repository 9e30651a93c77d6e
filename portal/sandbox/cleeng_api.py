"""A Cleeng stand-in: a publisher's subscription page whose "Subscribe" creates a Cleeng order and
sends the browser to the portal's payment page (`/cleeng/checkout?orderId=`), the API 3.1 calls
the portal makes (orders, payments; answers in Cleeng's `{"responseData", "errors"}` envelope,
`X-Publisher-Token` checked), the payment details and subscriptions a captured payment creates,
and a webhook sender (HMAC-signed like Cleeng's webhook verification) for renewals, refunds and
deactivated payment details, so the demo shows a subscription purchase and a recurring charge.
"""

from __future__ import annotations

import hmac
import json
import logging
import random
import secrets
import time
from decimal import ROUND_HALF_UP, Decimal

import requests
from flask import Blueprint, abort, current_app, jsonify, redirect, render_template, request

from portal.money import format_money, to_minor
from portal.platforms.cleeng.client import SIGNATURE_HEADER
from portal.platforms.cleeng.webhooks import signature

log = logging.getLogger("portal.sandbox.cleeng")
bp = Blueprint("sandbox_cleeng", __name__, url_prefix="/sandbox/cleeng")

API_PREFIX = "/sandbox/cleeng/3.1/"
PUBLISHER_ID = 555000111
ORDER_HOURS = 24
PERIOD_DAYS = {"week": 7, "month": 30, "year": 365}
OFFERS = {
    "S100000001_NL": {
        "title": "Premium Monthly",
        "period": "month",
        "price": "10.00",  # before tax
        "currency": "EUR",
        "country": "NL",
        "tax_rate": "0.21",
        "free_days": 0,
    },
    "S100000002_NL": {
        "title": "Premium Annual with a 7-day free trial",
        "period": "year",
        "price": "100.00",
        "currency": "EUR",
        "country": "NL",
        "tax_rate": "0.21",
        "free_days": 7,
    },
}
COUPONS = {"WELCOME20": Decimal("0.20")}  # percent off the first period
ORDER_FIELDS = {
    "customerId",
    "offerId",
    "currency",
    "country",
    "paymentMethodId",
    "couponCode",
    "customerIP",
    "taxRate",
    "paymentOperation",
    "subscriptionId",
}
PAYMENT_FIELDS = {
    "orderId",
    "status",
    "paymentOperation",
    "paymentDetailsId",
    "paymentDetails",
    "externalPaymentId",
    "rejectedReason",
    "refundedReason",
    "subscriptionId",
}
PATCH_FIELDS = {
    "orderId",
    "status",
    "paymentOperation",
    "externalPaymentId",
    "paymentDetails",
    "rejectedReason",
    "refundedReason",
    "amount",
    "refundType",
}


def _store():
    return current_app.extensions["sandbox_store"]


def _settings():
    return current_app.config["PORTAL"]


def _new_id() -> str:
    return str(secrets.randbelow(900_000_000) + 100_000_000)


def _amount(value: Decimal) -> float:
    """Cleeng sends amounts as JSON numbers."""
    return float(value.quantize(Decimal("0.01"), ROUND_HALF_UP))


def _money(amount, currency: str) -> str:
    return format_money(to_minor(str(amount), currency), currency)


# --- orders, payments, subscriptions -------------------------------------------------------------


def new_customer(email: str) -> dict:
    customer = {"id": _new_id(), "email": email, "locale": "en_US", "created": int(time.time())}
    _store().put("cleeng.customer", customer["id"], customer)
    return customer


def new_order(
    customer: dict,
    offer_id: str,
    *,
    coupon: str | None = None,
    subscription: dict | None = None,
    payment_method_id=None,
) -> dict:
    """An order priced like Cleeng does: the offer price before tax, a coupon or a free trial off
    it, tax at the country's rate on what is left, and the total. A renewal order (with its
    subscription) is always the full price."""
    offer = OFFERS[offer_id]
    price = Decimal(offer["price"])
    rate = Decimal(offer["tax_rate"])
    discount_type = None
    discount = Decimal(0)
    if subscription is None and offer["free_days"]:
        discount_type, discount = "trial", price
    elif subscription is None and coupon in COUPONS:
        discount_type, discount = "coupon", price * COUPONS[coupon]
    discounted = price - discount
    tax = discounted * rate
    total = discounted + tax
    now = int(time.time())
    order = {
        "id": _new_id(),
        "customerId": int(customer["id"]),
        "customer": {"locale": customer["locale"], "email": customer["email"]},
        "publisherId": PUBLISHER_ID,
        "offerId": offer_id,
        "offer": {
            "offerId": offer_id,
            "offerTitle": offer["title"],
            "offerDescription": None,
            "period": offer["period"],
            "freeDays": offer["free_days"],
            "offerPrice": _amount(price),
            "offerCurrency": offer["currency"],
        },
        "totalPrice": _amount(total),
        "priceBreakdown": {
            "offerPrice": _amount(price),
            "discountAmount": _amount(discount),
            "discountedPrice": _amount(discounted),
            "taxValue": _amount(tax),
            "customerServiceFee": 0,
            "paymentMethodFee": 0,
        },
        "taxRate": float(rate),
        "taxBreakdown": None,
        "currency": offer["currency"],
        "country": offer["country"],
        "paymentMethodId": payment_method_id,
        "expirationDate": now + ORDER_HOURS * 3600,
        "billingAddress": None,
        "couponId": None,
        "couponCode": coupon if discount_type == "coupon" else None,
        "discount": {
            "applied": discount_type is not None,
            "type": discount_type or "",
            "periods": "1" if discount_type else "",
        },
        "requiredPaymentDetails": True,
        "created": now,
    }
    if subscription is not None:
        order["paymentOperation"] = "recurring-payment"
        order["subscriptionId"] = int(subscription["id"])
    _store().put("cleeng.order", order["id"], order)
    return order


def _public(order: dict) -> dict:
    return {k: v for k, v in order.items() if k != "created"}


def _payments_of(order_id: str) -> list[dict]:
    return [p for p in _store().list("cleeng.payment") if str(p["orderId"]) == str(order_id)]


# --- the API ------------------------------------------------------------------------------------


@bp.before_request
def api_guard():
    if not request.path.startswith(API_PREFIX):
        return None
    store = _store()
    settings = _settings()
    latency = store.control("cleeng_latency_ms", settings.sandbox_latency_ms)
    if latency:
        time.sleep(latency / 1000)
    given = request.headers.get("X-Publisher-Token", "")
    expected = settings.cleeng_publisher_token or ""
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        return _answer(401, errors=["Invalid publisher token."])
    fault_rate = store.control("cleeng_fault_rate", settings.sandbox_fault_rate)
    if request.method != "GET" and fault_rate and random.random() < fault_rate:  # noqa: S311
        return _answer(503, errors=["Service unavailable (sandbox fault injection)."])
    return None


def _answer(status: int = 200, *, data=None, errors=None):
    _store().log_call(
        "cleeng", request.method, request.path, request.get_data(as_text=True) or None, status
    )
    response = jsonify({"responseData": data or {}, "errors": errors or []})
    response.status_code = status
    return response


def _body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(_answer(400, errors=["Send a JSON object."]))
    return data


def _unknown(data: dict, allowed: set[str]):
    unknown = sorted(set(data) - allowed)
    if unknown:
        abort(_answer(422, errors=[f"Unknown field(s): {', '.join(unknown)}."]))


def _order_or_404(order_id) -> dict:
    order = _store().get("cleeng.order", str(order_id))
    if order is None:
        abort(_answer(404, errors=["Order not found."]))
    return order


@bp.get("/3.1/orders/<order_id>")
def get_order(order_id):
    return _answer(data={"order": _public(_order_or_404(order_id))})


@bp.post("/3.1/orders")
def create_order():
    data = _body()
    _unknown(data, ORDER_FIELDS)
    missing = [name for name in ("customerId", "offerId") if not data.get(name)]
    if missing:
        return _answer(422, errors=[f"Missing field(s): {', '.join(missing)}."])
    customer = _store().get("cleeng.customer", str(data["customerId"]))
    if customer is None:
        return _answer(404, errors=["Customer not found."])
    if data["offerId"] not in OFFERS:
        return _answer(404, errors=["Offer not found."])
    if bool(data.get("paymentOperation")) != bool(data.get("subscriptionId")):
        return _answer(422, errors=["paymentOperation and subscriptionId go together."])
    subscription = None
    if data.get("subscriptionId"):
        if data.get("paymentOperation") != "recurring-payment":
            return _answer(422, errors=["paymentOperation must be recurring-payment."])
        subscription = _store().get("cleeng.subscription", str(data["subscriptionId"]))
        if subscription is None or str(subscription["customerId"]) != customer["id"]:
            return _answer(404, errors=["Subscription not found."])
    if data.get("currency") and data["currency"] != OFFERS[data["offerId"]]["currency"]:
        return _answer(422, errors=["This offer is not sold in that currency."])
    order = new_order(
        customer,
        data["offerId"],
        coupon=(data.get("couponCode") or "").upper() or None,
        subscription=subscription,
        payment_method_id=data.get("paymentMethodId"),
    )
    return _answer(data={"order": _public(order)})


def _check_payment(data: dict, order: dict):
    status = data.get("status")
    operation = data.get("paymentOperation")
    if status not in {"captured", "rejected", "authorized", "cancelled"}:
        return "status must be captured, rejected, authorized or cancelled."
    if operation not in {"initial-payment", "recurring-payment"}:
        return "paymentOperation must be initial-payment or recurring-payment."
    if operation == "recurring-payment" and str(data.get("subscriptionId")) != str(
        order.get("subscriptionId")
    ):
        return "subscriptionId does not match the order."
    if status == "rejected" and not data.get("rejectedReason"):
        return "rejectedReason is required for a rejected payment."
    if status == "captured" and not data.get("externalPaymentId"):
        return "externalPaymentId is required for a captured payment."
    details = data.get("paymentDetails")
    has_token = isinstance(details, dict) and bool(details.get("token"))
    if status == "captured" and operation == "initial-payment" and not has_token:
        return "paymentDetails with a token are required for an initial payment."
    if (
        operation == "recurring-payment"
        and status == "captured"
        and not data.get("paymentDetailsId")
    ):
        return "paymentDetailsId is required for a recurring payment."
    if order["expirationDate"] < time.time():
        return "Order expired."
    return None


@bp.post("/3.1/payments")
def create_payment():
    data = _body()
    _unknown(data, PAYMENT_FIELDS)
    order = _order_or_404(data.get("orderId"))
    problem = _check_payment(data, order)
    if problem:
        return _answer(422, errors=[problem])
    if any(p["status"] == "captured" for p in _payments_of(order["id"])):
        return _answer(409, errors=["Order has already been paid."])
    store = _store()
    details_id = data.get("paymentDetailsId")
    details = data.get("paymentDetails")
    if isinstance(details, dict) and details.get("token"):
        record = {
            "id": int(_new_id()),
            "customerId": order["customerId"],
            "token": details["token"],
            "paymentMethodId": order.get("paymentMethodId"),
            "paymentMethodSpecificParams": details.get("paymentMethodSpecificParams") or {},
            "active": True,
            "created": int(time.time()),
        }
        store.put("cleeng.payment_details", str(record["id"]), record)
        details_id = record["id"]
    payment = {
        "id": int(_new_id()),
        "orderId": int(order["id"]),
        "status": data["status"],
        "totalAmount": order["totalPrice"],
        "currency": order["currency"],
        "customerId": order["customerId"],
        "paymentGateway": "portal",
        "paymentMethod": "card",
        "externalPaymentId": data.get("externalPaymentId"),
        "amount": order["totalPrice"],
        "country": order["country"],
        "offerType": "subscription",
        "taxValue": order["priceBreakdown"]["taxValue"],
        "rejectedReason": data.get("rejectedReason"),
        "refundedReason": None,
        "paymentDetailsId": int(details_id) if details_id else None,
        "paymentOperation": data["paymentOperation"],
        "created": int(time.time()),
    }
    store.put("cleeng.payment", str(payment["id"]), payment)
    _apply_to_subscription(order, payment)
    return _answer(data=_public(payment))


def _apply_to_subscription(order: dict, payment: dict) -> None:
    """A captured initial payment starts a subscription; a captured renewal extends it; a
    rejected renewal counts a failed dunning attempt."""
    store = _store()
    offer = OFFERS[order["offerId"]]
    now = int(time.time())
    if payment["paymentOperation"] == "initial-payment":
        if payment["status"] != "captured":
            return
        first_days = offer["free_days"] or PERIOD_DAYS[offer["period"]]
        subscription = {
            "id": _new_id(),
            "customerId": order["customerId"],
            "offerId": order["offerId"],
            "orderId": order["id"],
            "status": "active",
            "expiresAt": now + first_days * 86400,
            "paymentDetailsId": payment["paymentDetailsId"],
            "currency": order["currency"],
            "country": order["country"],
            "paymentMethodId": order.get("paymentMethodId"),
            "renewals": 0,
            "failedAttempts": 0,
            "created": now,
        }
        store.put("cleeng.subscription", subscription["id"], subscription)
        order["subscriptionId"] = int(subscription["id"])
        store.put("cleeng.order", order["id"], order)
        return
    subscription = store.get("cleeng.subscription", str(order["subscriptionId"]))
    if payment["status"] == "captured":
        subscription["expiresAt"] += PERIOD_DAYS[offer["period"]] * 86400
        subscription["renewals"] += 1
        subscription["failedAttempts"] = 0
        subscription["status"] = "active"
    elif payment["status"] == "rejected":
        subscription["failedAttempts"] += 1
    store.put("cleeng.subscription", subscription["id"], subscription)


@bp.patch("/3.1/payments/<payment_id>")
def update_payment(payment_id):
    data = _body()
    _unknown(data, PATCH_FIELDS)
    store = _store()
    payment = store.get("cleeng.payment", payment_id)
    if payment is None:
        return _answer(404, errors=["Payment not found."])
    if data.get("status") not in {"rejected", "captured", "refunded"}:
        return _answer(422, errors=["status must be rejected, captured or refunded."])
    if data["status"] == "refunded":
        if str(data.get("orderId")) != str(payment["orderId"]):
            return _answer(422, errors=["orderId is required and must match the payment."])
        if data.get("paymentOperation") != payment["paymentOperation"]:
            return _answer(422, errors=["paymentOperation is required for a refund."])
        if payment["status"] != "captured" and payment["status"] != "refunded":
            return _answer(422, errors=["Only a captured payment can be refunded."])
        payment["refundedReason"] = data.get("refundedReason")
        payment["refundedAmount"] = data.get("amount", payment["amount"])
    captured_now = data["status"] == "captured" and payment["status"] == "authorized"
    failed_now = data["status"] == "rejected" and payment["status"] == "authorized"
    if data["status"] in {"captured", "rejected"} and payment["status"] not in {
        "authorized",
        data["status"],
    }:
        return _answer(
            422, errors=[f"A {payment['status']} payment cannot become {data['status']}."]
        )
    if data["status"] == "rejected" and not data.get("rejectedReason"):
        return _answer(422, errors=["rejectedReason is required for a rejected payment."])
    if data.get("externalPaymentId"):
        payment["externalPaymentId"] = data["externalPaymentId"]
    if data.get("rejectedReason"):
        payment["rejectedReason"] = data["rejectedReason"]
    payment["status"] = data["status"]
    store.put("cleeng.payment", payment_id, payment)
    if captured_now or failed_now:
        # The capture of an authorisation (split authorise and capture): as a captured payment.
        _apply_to_subscription(_order_or_404(payment["orderId"]), payment)
    return _answer(data=_public(payment))


# --- the webhook sender -------------------------------------------------------------------------


def send_webhook(topic: str, data: dict) -> int | None:
    """POST a signed event to the portal, as Cleeng does; the answer is kept for the page."""
    settings = _settings()
    body = json.dumps({"broadcasterId": PUBLISHER_ID, "topic": topic, "data": data})
    secret = settings.cleeng_webhook_secret[0]
    status = None
    try:
        response = requests.post(
            settings.public_url + "/webhooks/cleeng",
            data=body,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: signature(body.encode(), secret),
            },
            timeout=(3.05, 30),
        )
        status = response.status_code
    except requests.RequestException as exc:
        log.warning("sandbox Cleeng webhook %s failed: %s", topic, exc)
    _store().log_call("cleeng-webhook", "POST", f"/webhooks/cleeng ({topic})", body, status or 0)
    return status


def _iso(timestamp: int | None) -> str | None:
    if timestamp is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def renewal_event(subscription: dict, dunning_status: str = "capture") -> dict:
    """`subscriptionReadyForPaymentCapture` (or, with `dunning_status="authorize"`,
    `subscriptionReadyForPaymentAuthorisation`) for the subscription's current period. Dunning
    retries a declined renewal a day apart, so the same period and attempt give the same event
    (a resend is a duplicate) and a retry after a decline is a new one."""
    customer = _store().get("cleeng.customer", str(subscription["customerId"]))
    details = _store().get("cleeng.payment_details", str(subscription["paymentDetailsId"]))
    attempt_date = subscription["expiresAt"] + subscription["failedAttempts"] * 86400
    return {
        "subscriptionId": int(subscription["id"]),
        "offerId": subscription["offerId"],
        "customerId": subscription["customerId"],
        "customerEmail": customer["email"] if customer else None,
        "paymentDetailsId": subscription["paymentDetailsId"],
        "active": True,
        "dunningAttemptDate": _iso(attempt_date),
        "dunningStatus": dunning_status,
        "expirationDate": _iso(subscription["expiresAt"]),
        "currency": subscription["currency"],
        "paymentCountry": subscription["country"],
        "paymentMethodId": subscription["paymentMethodId"],
        "token": details["token"] if details and details.get("active") else None,
    }


# --- the publisher's pages ------------------------------------------------------------------------


def _offers() -> list[dict]:
    return [
        {
            "id": offer_id,
            **offer,
            "display_price": _money(offer["price"], offer["currency"]),
        }
        for offer_id, offer in OFFERS.items()
    ]


@bp.get("/")
def index():
    calls = list(reversed(_store().calls("cleeng")[-20:]))
    webhooks = list(reversed(_store().calls("cleeng-webhook")[-10:]))
    return render_template(
        "sandbox/cleeng_index.html", offers=_offers(), calls=calls, webhooks=webhooks
    )


@bp.post("/subscribe")
def subscribe():
    """The publisher's "Subscribe": a Cleeng customer and order, then the payment connector."""
    offer_id = request.form.get("offer", "")
    if offer_id not in OFFERS:
        abort(404)
    email = (request.form.get("email") or "").strip() or "viewer@example.com"
    customer = new_customer(email[:200])
    coupon = (request.form.get("coupon") or "").strip().upper() or None
    order = new_order(
        customer,
        offer_id,
        coupon=coupon,
        payment_method_id=int(_settings().cleeng_payment_method_id or 0) or None,
    )
    return redirect(f"{_settings().public_url}/cleeng/checkout?orderId={order['id']}", 303)


def _account(order: dict) -> dict:
    """Everything the return page shows about the customer of an order."""
    store = _store()
    subscriptions = [
        s
        for s in store.list("cleeng.subscription")
        if str(s["customerId"]) == str(order["customerId"])
    ]
    orders = {
        o["id"]: o
        for o in store.list("cleeng.order")
        if str(o["customerId"]) == str(order["customerId"])
    }
    payments = [p for p in store.list("cleeng.payment") if str(p["orderId"]) in orders]
    details = [
        d
        for d in store.list("cleeng.payment_details")
        if str(d["customerId"]) == str(order["customerId"])
    ]
    return {
        "subscriptions": [
            {**s, "expires": _iso(s["expiresAt"]), "offer": OFFERS[s["offerId"]]["title"]}
            for s in subscriptions
        ],
        "payments": payments,
        "details": details,
    }


@bp.get("/return")
def return_page():
    """The publisher's page after the payment connector: the order and what it started."""
    order = _store().get("cleeng.order", request.args.get("orderId", ""))
    if order is None:
        abort(404)
    return render_template(
        "sandbox/cleeng_return.html",
        order=order,
        offer=OFFERS[order["offerId"]],
        account=_account(order),
        sent=request.args.get("sent"),
        sent_status=request.args.get("status"),
    )


def _back(order_id, sent: str, status: int | None):
    return redirect(
        f"{_settings().public_url}/sandbox/cleeng/return?orderId={order_id}"
        f"&sent={sent}&status={status or 'failed'}",
        303,
    )


@bp.post("/subscriptions/<subscription_id>/renew")
def renew(subscription_id):
    """Cleeng's billing run for one subscription: `subscriptionReadyForPaymentCapture`."""
    subscription = _store().get("cleeng.subscription", subscription_id)
    if subscription is None:
        abort(404)
    if request.form.get("split") == "1":
        # Cleeng's dunning with authorizedFirst: authorise now, capture the same period after.
        status = send_webhook(
            "subscriptionReadyForPaymentAuthorisation", renewal_event(subscription, "authorize")
        )
        if status == 200:
            wait = request.form.get("wait", "10")
            _wait_for_authorisation(subscription, min(float(wait) if wait.isdigit() else 10, 10))
            status = send_webhook("subscriptionReadyForPaymentCapture", renewal_event(subscription))
        return _back(subscription["orderId"], "authorisation and capture", status)
    status = send_webhook("subscriptionReadyForPaymentCapture", renewal_event(subscription))
    return _back(subscription["orderId"], "renewal", status)


def _wait_for_authorisation(subscription: dict, seconds: float = 10) -> None:
    """Cleeng sends the capture some time after the authorisation: here, once the portal's
    worker has reported it (or after `seconds`)."""
    deadline = time.monotonic() + seconds
    since = int(time.time()) - 1
    while time.monotonic() < deadline:
        orders = {
            o["id"]
            for o in _store().list("cleeng.order")
            if str(o.get("subscriptionId")) == str(subscription["id"])
        }
        if any(
            p["status"] != "captured"
            and str(p["orderId"]) in orders
            and p.get("paymentOperation") == "recurring-payment"
            and p["created"] >= since
            for p in _store().list("cleeng.payment")
        ):
            return
        time.sleep(0.1)


@bp.post("/payments/<payment_id>/refund")
def refund(payment_id):
    """A refund requested in Cleeng's dashboard: `refundPayment` to the connector."""
    payment = _store().get("cleeng.payment", payment_id)
    if payment is None or payment["status"] != "captured":
        abort(404)
    order = _store().get("cleeng.order", str(payment["orderId"]))
    status = send_webhook(
        "refundPayment",
        {
            "paymentId": payment["id"],
            "orderId": payment["orderId"],
            "externalPaymentId": payment["externalPaymentId"],
            "amount": payment["amount"],
            "currency": payment["currency"],
            "refundedReason": "Requested by the customer",
        },
    )
    subscription = _store().get("cleeng.subscription", str(order.get("subscriptionId")))
    return _back(subscription["orderId"] if subscription else order["id"], "refund", status)


@bp.post("/payment_details/<details_id>/deactivate")
def deactivate(details_id):
    """The customer removed their card in Cleeng: `paymentDetailsDeactivated`."""
    details = _store().get("cleeng.payment_details", details_id)
    if details is None:
        abort(404)
    details["active"] = False
    _store().put("cleeng.payment_details", details_id, details)
    status = send_webhook(
        "paymentDetailsDeactivated",
        {
            "paymentDetailsId": details["id"],
            "customerId": details["customerId"],
            "token": details["token"],
            "paymentMethodId": details.get("paymentMethodId"),
        },
    )
    order_id = request.form.get("orderId", "")
    return _back(order_id, "deactivation", status)
