"""Cleeng as a payment connector, with Cleeng and Stripe stood in by `responses`: the exact requests
the portal sends for a paid order, a failed one, a free trial, a renewal that is captured or
declined, a refund, a removed card, duplicate webhooks and Cleeng outages, and what the learner
sees for every bad link."""

from __future__ import annotations

import json
import re
import time
from urllib.parse import parse_qsl

import pytest
import requests
from sqlalchemy import func, select

from portal import ConfigError
from portal.db import db
from portal.jobs import Worker
from portal.models import Job, JobState, OrderEvent, OrderState
from portal.orders import find as find_order
from portal.orders import refresh as reload
from portal.platforms.cleeng.client import SIGNATURE_HEADER
from portal.platforms.cleeng.models import CleengCustomer, CleengPayment
from portal.platforms.cleeng.webhooks import signature
from portal.sandbox.stripe_api import build_event, sign
from tests.conftest import STRIPE_BASE

CLEENG_BASE = "https://cleeng.test/3.1"
ORDER_ID = "343967543"
ORDER_URL = f"{CLEENG_BASE}/orders/{ORDER_ID}"
ORDERS_URL = f"{CLEENG_BASE}/orders"
PAYMENTS_URL = f"{CLEENG_BASE}/payments"
SESSIONS_URL = f"{STRIPE_BASE}/v1/checkout/sessions"
SESSION_URL = f"{SESSIONS_URL}/cs_test_1"
CUSTOMERS_URL = f"{STRIPE_BASE}/v1/customers"
INTENTS_URL = f"{STRIPE_BASE}/v1/payment_intents"
REFUNDS_URL = f"{STRIPE_BASE}/v1/refunds"
METHOD_URL = f"{STRIPE_BASE}/v1/payment_methods/pm_1"
WEBHOOK_SECRET = "cleeng-webhook-secret-1"
RETURN_URL = "https://publisher.test/welcome"
SETTINGS = {
    "CLEENG_PUBLISHER_TOKEN": "cleeng-unit-token",
    "CLEENG_API_BASE": CLEENG_BASE,
    "CLEENG_PAYMENT_METHOD_ID": "900000001",
    "CLEENG_WEBHOOK_SECRET": f"{WEBHOOK_SECRET},cleeng-webhook-secret-old",
    "CLEENG_RETURN_URL": RETURN_URL,
    "REDIRECT_HOSTS": "academy.test,publisher.test",
}
CARD = {
    "id": "pm_1",
    "object": "payment_method",
    "type": "card",
    "customer": "cus_1",
    "billing_details": {"name": "Matthew Brown", "email": "viewer@example.com"},
    "card": {"brand": "visa", "last4": "1111", "exp_month": 3, "exp_year": 2031},
}


@pytest.fixture
def app(make_app):
    return make_app(**SETTINGS)


def envelope(**response_data) -> dict:
    return {"responseData": response_data, "errors": []}


def cleeng_order(**overrides) -> dict:
    """An order as Cleeng's API 3.1 answers it: €10 a month, a 20% coupon, 21% VAT."""
    data = {
        "id": int(ORDER_ID),
        "customerId": 927751142,
        "customer": {"locale": "en_US", "email": "viewer@example.com"},
        "publisherId": 555000111,
        "offerId": "S619117184_NL",
        "offer": {"offerId": "S619117184_NL", "offerTitle": "Premium Monthly", "period": "month"},
        "totalPrice": 9.68,
        "priceBreakdown": {
            "offerPrice": 10.0,
            "discountAmount": 2.0,
            "discountedPrice": 8.0,
            "taxValue": 1.68,
            "customerServiceFee": 0,
            "paymentMethodFee": 0,
        },
        "taxRate": 0.21,
        "currency": "EUR",
        "country": "NL",
        "paymentMethodId": 900000001,
        "expirationDate": int(time.time()) + 3600,
        "couponCode": "WELCOME20",
        "discount": {"applied": True, "type": "coupon", "periods": "1"},
        "requiredPaymentDetails": True,
    }
    data.update(overrides)
    return data


def free_trial_order() -> dict:
    return cleeng_order(
        totalPrice=0,
        priceBreakdown={
            "offerPrice": 100.0,
            "discountAmount": 100.0,
            "discountedPrice": 0,
            "taxValue": 0,
            "customerServiceFee": 0,
            "paymentMethodFee": 0,
        },
        couponCode=None,
        discount={"applied": True, "type": "trial", "periods": "1"},
        offer={"offerId": "S619117184_NL", "offerTitle": "Premium Annual", "period": "year"},
    )


def form(body) -> dict:
    return dict(parse_qsl(body if isinstance(body, str) else body.decode()))


def sent(mocked, method: str, url: str) -> list:
    return [c.request for c in mocked.calls if c.request.method == method and c.request.url == url]


def body(request) -> dict:
    return json.loads(request.body)


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def count(model, *where) -> int:
    with db.reader() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def run_worker(app, mocked) -> dict:
    """`flask portal worker --once`, in-process; its periodic reconciliation lists no sessions."""
    mocked.get(SESSIONS_URL, json={"object": "list", "data": [], "has_more": False})
    return Worker(app.extensions["portal"], poll_seconds=0).run(once=True)


def open_review(client, mocked, order=None):
    mocked.get(ORDER_URL, json=envelope(order=order or cleeng_order()))
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 200, response.text
    return response


def press_pay(client, mocked, review, checkout_session, **session_fields):
    order = find_order("cleeng", ORDER_ID)
    mocked.post(CUSTOMERS_URL, json={"id": "cus_1", "object": "customer"})
    mocked.post(
        SESSIONS_URL,
        json=checkout_session(client_reference_id=order.reference, **session_fields),
    )
    response = client.post(f"/orders/{order.reference}/pay", data={"csrf_token": csrf(review.text)})
    assert response.status_code == 303, response.text
    return order


def paid_session(checkout_session, reference: str, **fields) -> dict:
    values = {
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": "pi_1",
        "amount_total": 968,
        "currency": "eur",
        "client_reference_id": reference,
        "url": None,
    }
    values.update(fields)
    return checkout_session(**values)


def cleeng_payment(**fields) -> dict:
    payment = {
        "id": 1536331075,
        "orderId": int(ORDER_ID),
        "status": "captured",
        "paymentDetailsId": 665665665,
        "paymentOperation": "initial-payment",
    }
    payment.update(fields)
    return payment


def pay_and_return(client, mocked, checkout_session, *, cleeng_answers=None):
    """Review, Pay, and back from Stripe with the payment made; returns the return response."""
    review = open_review(client, mocked)
    order = press_pay(client, mocked, review, checkout_session, amount_total=968, currency="eur")
    mocked.get(SESSION_URL, json=paid_session(checkout_session, order.reference))
    mocked.get(f"{INTENTS_URL}/pi_1", json={"id": "pi_1", "payment_method": "pm_1"})
    mocked.get(METHOD_URL, json=CARD)
    for answer in cleeng_answers or [{"json": envelope(**cleeng_payment())}]:
        mocked.post(PAYMENTS_URL, **answer)
    return client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")


# --- the review page ------------------------------------------------------------------------------


def test_review_page_shows_the_cleeng_order(client, mocked):
    response = open_review(client, mocked)
    (request,) = mocked.calls
    assert request.request.method == "GET"
    assert request.request.url == ORDER_URL
    assert request.request.headers["X-Publisher-Token"] == "cleeng-unit-token"
    text = response.text
    for expected in (
        "Premium Monthly",
        "Offer price (per month)",
        "€10.00",
        "Coupon <strong>WELCOME20</strong>",
        "−€2.00",
        "Tax (21%)",
        "+€1.68",
        "Pay €9.68",
        'name="csrf_token"',
    ):
        assert expected in text
    # No outgoing mail here: no receipt can be sent, so none is promised (test_receipts.py).
    assert "Your receipt will be sent" not in text
    order = find_order("cleeng", ORDER_ID)
    assert (order.amount_minor, order.currency, order.list_unit_minor) == (968, "EUR", 1000)
    assert order.redirect_url == f"{RETURN_URL}?orderId={ORDER_ID}"
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("order_id", ["", "abc", "12a", "../1", "1" * 21, "-5"])
def test_malformed_order_ids_are_refused_before_any_call(client, mocked, order_id):
    response = client.get("/cleeng/checkout", query_string={"orderId": order_id})
    assert response.status_code == 400
    assert "not valid" in response.text
    assert len(mocked.calls) == 0


def test_unknown_order_is_404(client, mocked):
    mocked.get(ORDER_URL, json={"responseData": {}, "errors": ["Order not found"]}, status=404)
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 404
    assert "could not find this order" in response.text
    assert find_order("cleeng", ORDER_ID) is None


def test_expired_order_is_410(client, mocked):
    mocked.get(ORDER_URL, json=envelope(order=cleeng_order(expirationDate=int(time.time()) - 60)))
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 410
    assert "This order has expired" in response.text
    assert find_order("cleeng", ORDER_ID) is None


def test_order_for_another_payment_method_is_403(client, mocked):
    mocked.get(ORDER_URL, json=envelope(order=cleeng_order(paymentMethodId=123876432)))
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 403
    assert "cannot be paid here" in response.text
    assert find_order("cleeng", ORDER_ID) is None


def test_another_publishers_order_is_403(client, mocked):
    mocked.get(ORDER_URL, json={"responseData": {}, "errors": ["Access denied"]}, status=403)
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 403
    assert "another subscription service" in response.text


@pytest.mark.parametrize(
    "answer",
    [
        {"status": 500, "json": {"responseData": {}, "errors": ["boom"]}},
        {"status": 401, "json": {"responseData": {}, "errors": ["Invalid token"]}},
        {"body": requests.Timeout("read timed out")},
    ],
)
def test_cleeng_down_at_the_entry_is_a_branded_503(client, mocked, answer):
    mocked.get(ORDER_URL, **answer)
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 503
    assert "you have not been charged" in response.text
    assert "Traceback" not in response.text


def test_order_with_an_uncharged_precision_is_refused(client, mocked):
    mocked.get(ORDER_URL, json=envelope(order=cleeng_order(totalPrice=9.685)))
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 502
    assert find_order("cleeng", ORDER_ID) is None


def test_without_a_publisher_token_checkout_is_not_set_up(make_app, mocked):
    client = make_app(**{**SETTINGS, "CLEENG_PUBLISHER_TOKEN": None}).test_client()
    response = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert response.status_code == 503
    assert "not set up" in response.text
    assert len(mocked.calls) == 0


def test_return_url_must_be_allow_listed(make_app):
    with pytest.raises(ConfigError, match="PORTAL_CLEENG_RETURN_URL"):
        make_app(**{**SETTINGS, "CLEENG_RETURN_URL": "https://elsewhere.test/welcome"})


# --- paying ---------------------------------------------------------------------------------------


def test_pay_saves_the_card_to_the_cleeng_customers_stripe_customer(
    client, mocked, checkout_session
):
    review = open_review(client, mocked)
    order = press_pay(client, mocked, review, checkout_session)
    (customer,) = sent(mocked, "POST", CUSTOMERS_URL)
    assert customer.headers["Idempotency-Key"] == "cleeng-customer-927751142"
    assert form(customer.body) == {
        "email": "viewer@example.com",
        "metadata[cleeng_customer_id]": "927751142",
    }
    (create,) = sent(mocked, "POST", SESSIONS_URL)
    params = form(create.body)
    assert params["mode"] == "payment"
    assert params["customer"] == "cus_1"
    assert "customer_email" not in params  # Stripe takes a customer or an email, not both
    assert params["payment_intent_data[setup_future_usage]"] == "off_session"
    assert params["line_items[0][price_data][currency]"] == "eur"
    assert params["line_items[0][price_data][unit_amount]"] == "968"  # Cleeng's total
    assert "line_items[1][price_data][unit_amount]" not in params  # tax is inside it
    assert params["cancel_url"] == f"http://portal.test/cleeng/orders/{order.reference}/cancelled"
    with db.reader() as session:
        assert session.get(CleengCustomer, "927751142").stripe_customer_id == "cus_1"

    assert reload(order).state == OrderState.PAYING

    # The same Cleeng customer's next order reuses the Stripe Customer.
    mocked.get(f"{CLEENG_BASE}/orders/343967544", json=envelope(order=cleeng_order(id=343967544)))
    second = client.get("/cleeng/checkout?orderId=343967544")
    mocked.post(
        SESSIONS_URL,
        json=checkout_session(
            id="cs_test_2", client_reference_id=find_order("cleeng", "343967544").reference
        ),
    )
    reference = find_order("cleeng", "343967544").reference
    client.post(f"/orders/{reference}/pay", data={"csrf_token": csrf(second.text)})
    assert len(sent(mocked, "POST", CUSTOMERS_URL)) == 1
    assert form(sent(mocked, "POST", SESSIONS_URL)[1].body)["customer"] == "cus_1"
    assert count(CleengCustomer) == 1


def test_portal_tax_settings_never_add_tax_to_a_cleeng_total(make_app, mocked, checkout_session):
    client = make_app(**SETTINGS, TAX_MODE="fixed", TAX_RATES="NL:21").test_client()
    review = open_review(client, mocked)
    assert "Pay €9.68" in review.text
    press_pay(client, mocked, review, checkout_session)
    params = form(sent(mocked, "POST", SESSIONS_URL)[0].body)
    assert params["line_items[0][price_data][unit_amount]"] == "968"
    assert "line_items[1][price_data][unit_amount]" not in params
    assert "automatic_tax[enabled]" not in params


def test_paid_order_is_reported_captured_once_and_the_learner_goes_back(
    client, mocked, checkout_session
):
    response = pay_and_return(client, mocked, checkout_session)
    assert response.status_code == 303
    assert response.headers["Location"] == f"{RETURN_URL}?orderId={ORDER_ID}"
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert report.headers["X-Publisher-Token"] == "cleeng-unit-token"
    assert report.headers["Content-Type"] == "application/json"
    assert body(report) == {
        "orderId": int(ORDER_ID),
        "status": "captured",
        "paymentOperation": "initial-payment",
        "externalPaymentId": "pi_1",
        "paymentDetails": {
            "token": "pm_1",
            "paymentMethodSpecificParams": {
                "holderName": "Matthew Brown",
                "lastCardFourDigits": "1111",
                "variant": "visa",
                "cardExpirationDate": "03/2031",
            },
        },
    }
    order = find_order("cleeng", ORDER_ID)
    assert (order.state, order.amount_paid_minor) == (OrderState.FULFILLED, 968)
    with db.reader() as session:
        payment = session.scalar(select(CleengPayment))
    assert (payment.cleeng_payment_id, payment.payment_details_id) == ("1536331075", "665665665")
    assert (payment.stripe_payment_method_id, payment.status) == ("pm_1", "captured")

    # The webhook for the same payment, and another visit, report nothing more.
    client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")
    again = client.get(f"/cleeng/checkout?orderId={ORDER_ID}")
    assert again.headers["Location"] == f"{RETURN_URL}?orderId={ORDER_ID}"
    assert len(sent(mocked, "POST", PAYMENTS_URL)) == 1


def test_cleeng_down_after_payment_is_retried_until_it_answers(
    app, client, mocked, checkout_session
):
    response = pay_and_return(
        client,
        mocked,
        checkout_session,
        cleeng_answers=[
            {"status": 503, "json": {"responseData": {}, "errors": ["Service unavailable"]}},
            {"status": 503, "json": {"responseData": {}, "errors": ["Service unavailable"]}},
            {"json": envelope(**cleeng_payment())},
        ],
    )
    assert response.headers["Location"].endswith("/status")
    order = find_order("cleeng", ORDER_ID)
    assert order.state == OrderState.PAID
    status = client.get(response.headers["Location"])  # it tries again, in vain
    assert "Payment received" in status.text

    run_worker(app, mocked)
    assert find_order("cleeng", ORDER_ID).state == OrderState.FULFILLED
    first, second, third = sent(mocked, "POST", PAYMENTS_URL)
    assert body(first) == body(second) == body(third)  # the same report, retried


def test_cleeng_already_having_the_payment_counts_as_reported(
    app, client, mocked, checkout_session
):
    pay_and_return(
        client,
        mocked,
        checkout_session,
        cleeng_answers=[
            {"body": requests.ConnectionError("connection reset")},
            {"status": 409, "json": {"responseData": {}, "errors": ["Order already paid"]}},
        ],
    )
    run_worker(app, mocked)
    assert find_order("cleeng", ORDER_ID).state == OrderState.FULFILLED
    assert len(sent(mocked, "POST", PAYMENTS_URL)) == 2


def test_failed_payment_is_reported_rejected(app, client, mocked, checkout_session):
    review = open_review(client, mocked)
    order = press_pay(client, mocked, review, checkout_session)
    failed = paid_session(
        checkout_session, order.reference, payment_status="unpaid", payment_intent="pi_9"
    )
    mocked.get(SESSION_URL, json=failed)
    mocked.post(
        PAYMENTS_URL, json=envelope(**cleeng_payment(status="rejected", paymentDetailsId=None))
    )
    event = json.dumps(build_event("checkout.session.async_payment_failed", failed))
    delivered = client.post(
        "/webhooks/stripe",
        data=event,
        headers={"Stripe-Signature": sign(event, "whsec_unit_1")},
        content_type="application/json",
    )
    assert delivered.status_code == 200
    run_worker(app, mocked)
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert body(report) == {
        "orderId": int(ORDER_ID),
        "status": "rejected",
        "paymentOperation": "initial-payment",
        "rejectedReason": "The payment did not go through.",
        "externalPaymentId": "pi_9",
    }
    assert reload(order).state == OrderState.PAYMENT_FAILED


def test_free_trial_saves_a_card_in_setup_mode_and_reports_a_zero_payment(
    client, mocked, checkout_session
):
    review = open_review(client, mocked, free_trial_order())
    assert "Start your free trial" in review.text
    assert "Total today" in review.text
    order = press_pay(client, mocked, review, checkout_session, amount_total=None)
    params = form(sent(mocked, "POST", SESSIONS_URL)[0].body)
    assert params["mode"] == "setup"
    assert params["currency"] == "eur"
    assert params["customer"] == "cus_1"
    assert params["setup_intent_data[metadata][order_reference]"] == order.reference
    assert params["client_reference_id"] == order.reference
    assert not any(key.startswith(("line_items", "payment_intent_data")) for key in params)

    complete = paid_session(
        checkout_session,
        order.reference,
        mode="setup",
        payment_status="no_payment_required",
        payment_intent=None,
        setup_intent="seti_1",
        amount_total=None,  # as Stripe sends it for setup mode
    )
    mocked.get(SESSION_URL, json=complete)
    mocked.get(
        f"{STRIPE_BASE}/v1/setup_intents/seti_1", json={"id": "seti_1", "payment_method": "pm_1"}
    )
    mocked.get(METHOD_URL, json=CARD)
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment()))
    response = client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")
    assert response.headers["Location"] == f"{RETURN_URL}?orderId={ORDER_ID}"
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert body(report)["status"] == "captured"
    assert body(report)["externalPaymentId"] == "seti_1"
    assert body(report)["paymentDetails"]["token"] == "pm_1"
    order = reload(order)
    assert (order.state, order.amount_paid_minor) == (OrderState.FULFILLED, 0)
    assert count(OrderEvent, OrderEvent.order_id == order.id, OrderEvent.kind == "alert") == 0


def test_back_from_stripe_shows_the_cleeng_review_and_can_go_back(client, mocked, checkout_session):
    review = open_review(client, mocked)
    order = press_pay(client, mocked, review, checkout_session)
    page = client.get(f"/cleeng/orders/{order.reference}/cancelled")
    assert page.status_code == 200
    assert "Payment not completed" in page.text
    assert "+€1.68" in page.text
    mocked.post(f"{SESSION_URL}/expire", json=checkout_session(status="expired"))
    mocked.get(
        SESSION_URL, json=checkout_session(status="expired", client_reference_id=order.reference)
    )
    gone = client.post(f"/orders/{order.reference}/cancel", data={"csrf_token": csrf(page.text)})
    assert gone.headers["Location"] == f"{RETURN_URL}?orderId={ORDER_ID}"
    assert reload(order).state == OrderState.CANCELLED
    assert not sent(mocked, "POST", PAYMENTS_URL)  # an unpaid Cleeng order expires by itself


# --- webhooks: authentication and queueing ------------------------------------------------------


def renewal_event(topic: str = "subscriptionReadyForPaymentCapture", **data) -> dict:
    values = {
        "subscriptionId": "332332332",
        "offerId": "S619117184_NL",
        "customerId": 927751142,
        "customerEmail": "viewer@example.com",
        "paymentDetailsId": 665665665,
        "active": True,
        "dunningAttemptDate": "2026-12-22T09:00:00Z",
        "dunningStatus": "capture",
        "expirationDate": "2026-12-22T09:00:00Z",
        "currency": "EUR",
        "paymentCountry": "NL",
        "paymentMethodId": 900000001,
        "token": "pm_1",
    }
    values.update(data)
    return {"broadcasterId": 555000111, "topic": topic, "data": values}


def deliver(client, event: dict, *, secret: str | None = WEBHOOK_SECRET, header=None):
    payload = json.dumps(event).encode()
    headers = {}
    if header is not None:
        headers[SIGNATURE_HEADER] = header
    elif secret is not None:
        headers[SIGNATURE_HEADER] = signature(payload, secret)
    return client.post(
        "/webhooks/cleeng", data=payload, headers=headers, content_type="application/json"
    )


@pytest.mark.parametrize(
    ("secret", "header"),
    [
        (None, None),  # no signature
        ("not-the-secret", None),  # signed with another key
        (None, "sha256=" + "0" * 64),
        (None, ""),
    ],
)
def test_unsigned_or_badly_signed_webhooks_are_401_and_nothing_is_queued(
    client, mocked, secret, header
):
    response = deliver(client, renewal_event(), secret=secret, header=header)
    assert response.status_code == 401
    assert response.json["error"]["code"] == "bad_signature"
    assert count(Job) == 0


def test_a_tampered_body_fails_the_signature(client, mocked):
    event = renewal_event()
    header = signature(json.dumps(event).encode(), WEBHOOK_SECRET)
    event["data"]["token"] = "pm_attacker"
    assert deliver(client, event, header=header).status_code == 401
    assert count(Job) == 0


def test_the_old_secret_still_works_while_rotating(client, mocked):
    response = deliver(client, renewal_event(), secret="cleeng-webhook-secret-old")
    assert response.status_code == 200
    assert count(Job) == 1


def test_without_a_webhook_secret_webhooks_are_refused(make_app, mocked):
    client = make_app(**{**SETTINGS, "CLEENG_WEBHOOK_SECRET": ""}).test_client()
    response = deliver(client, renewal_event())
    assert response.status_code == 503
    assert count(Job) == 0


def test_signed_but_malformed_events_are_400(client, mocked):
    payload = b'{"topic": "refundPayment", "data": "nope"}'
    response = client.post(
        "/webhooks/cleeng",
        data=payload,
        headers={SIGNATURE_HEADER: signature(payload, WEBHOOK_SECRET)},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert count(Job) == 0


def test_other_topics_and_other_connectors_events_are_acknowledged_and_ignored(client, mocked):
    other_topic = deliver(client, renewal_event(topic="subscriptionReadyForTermination"))
    other_method = deliver(client, renewal_event(paymentMethodId=123876432))
    assert other_topic.status_code == other_method.status_code == 200
    assert other_topic.json["outcome"] == "ignored: topic not handled"
    assert other_method.json["outcome"] == "ignored: another payment method"
    assert count(Job) == 0


def test_the_webhook_is_stored_before_the_200_and_a_duplicate_is_not(app, client, mocked):
    first = deliver(client, renewal_event())
    again = deliver(client, renewal_event())
    assert (first.status_code, again.status_code) == (200, 200)
    assert (first.json["duplicate"], again.json["duplicate"]) == (False, True)
    with db.reader() as session:
        (job,) = session.scalars(select(Job)).all()
    assert job.kind == "cleeng_renewal"
    assert job.payload["data"]["subscriptionId"] == "332332332"


def test_database_down_answers_503_so_cleeng_sends_again(client, mocked, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from portal import jobs

    def down(_key):
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(jobs, "job_state", down)
    assert deliver(client, renewal_event()).status_code == 503


# --- renewals ------------------------------------------------------------------------------------


@pytest.fixture
def saved_card(app):
    """The Cleeng customer's Stripe Customer, as the initial purchase left it."""
    with db.transaction() as session:
        session.add(CleengCustomer(customer_id="927751142", stripe_customer_id="cus_1"))


def recurring_order(order_id: int = 444555666) -> dict:
    return cleeng_order(
        id=order_id,
        totalPrice=12.1,
        priceBreakdown={"offerPrice": 10.0, "discountAmount": 0, "taxValue": 2.1},
        couponCode=None,
        discount={"applied": False, "type": "", "periods": ""},
        paymentOperation="recurring-payment",
        subscriptionId=332332332,
    )


def charged(intent_id: str = "pi_2") -> dict:
    return {"id": intent_id, "object": "payment_intent", "status": "succeeded", "amount": 1210}


def declined(message: str = "Your card has insufficient funds.") -> dict:
    return {
        "error": {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": "insufficient_funds",
            "message": message,
            "payment_intent": {"id": "pi_3", "status": "requires_payment_method"},
        }
    }


def test_renewal_creates_the_recurring_order_charges_off_session_and_reports_captured(
    app, client, mocked, saved_card
):
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, json=charged())
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment(id=1536331076, orderId=444555666)))
    assert deliver(client, renewal_event()).status_code == 200
    run_worker(app, mocked)

    (order,) = sent(mocked, "POST", ORDERS_URL)
    assert order.headers["X-Publisher-Token"] == "cleeng-unit-token"
    assert body(order) == {
        "customerId": 927751142,
        "offerId": "S619117184_NL",
        "currency": "EUR",
        "paymentOperation": "recurring-payment",
        "subscriptionId": 332332332,
        "country": "NL",
        "paymentMethodId": 900000001,
    }
    (charge,) = sent(mocked, "POST", INTENTS_URL)
    assert charge.headers["Idempotency-Key"].startswith(
        "cleeng-renewal-332332332-2026-12-22T09:00:00Z-"
    )
    assert form(charge.body) == {
        "amount": "1210",
        "currency": "eur",
        "customer": "cus_1",
        "payment_method": "pm_1",
        "off_session": "true",
        "confirm": "true",
        "description": "Cleeng subscription 332332332 renewal",
        "metadata[cleeng_subscription_id]": "332332332",
        "metadata[cleeng_order_id]": "444555666",
        "metadata[cleeng_customer_id]": "927751142",
    }
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert body(report) == {
        "orderId": 444555666,
        "status": "captured",
        "paymentOperation": "recurring-payment",
        "subscriptionId": 332332332,
        "externalPaymentId": "pi_2",
        "paymentDetailsId": 665665665,
    }
    with db.reader() as session:
        attempt = session.scalar(select(CleengPayment))
        (job,) = session.scalars(select(Job).where(Job.kind == "cleeng_renewal")).all()
    assert (attempt.status, attempt.amount_minor, attempt.cleeng_payment_id) == (
        "captured",
        1210,
        "1536331076",
    )
    assert job.state == JobState.DONE

    # Delivered again after it was done: a duplicate; the job is never run again.
    assert deliver(client, renewal_event()).json["duplicate"] is True
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", INTENTS_URL)) == 1


def test_declined_renewal_is_reported_rejected_with_stripes_reason(app, client, mocked, saved_card):
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, status=402, json=declined())
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment(status="rejected")))
    deliver(client, renewal_event())
    run_worker(app, mocked)
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert body(report) == {
        "orderId": 444555666,
        "status": "rejected",
        "paymentOperation": "recurring-payment",
        "subscriptionId": 332332332,
        "externalPaymentId": "pi_3",
        "paymentDetailsId": 665665665,
        "rejectedReason": "Your card has insufficient funds.",
    }

    # Cleeng's dunning tries the same period again a day later: a new attempt, a new charge.
    mocked.post(INTENTS_URL, json=charged("pi_4"))
    deliver(client, renewal_event(dunningAttemptDate="2026-12-23T09:00:00Z"))
    run_worker(app, mocked)
    first, second = sent(mocked, "POST", INTENTS_URL)
    assert first.headers["Idempotency-Key"] != second.headers["Idempotency-Key"]
    assert body(sent(mocked, "POST", PAYMENTS_URL)[-1])["status"] == "captured"


def test_authorisation_and_capture_of_one_period_charge_once(app, client, mocked, saved_card):
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, json=charged())
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment()))
    deliver(
        client,
        renewal_event(topic="subscriptionReadyForPaymentAuthorisation", dunningStatus="authorize"),
    )
    deliver(client, renewal_event())
    assert count(Job) == 2
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", INTENTS_URL)) == 1
    assert len(sent(mocked, "POST", PAYMENTS_URL)) == 1
    assert count(Job, Job.state == JobState.DONE, Job.kind == "cleeng_renewal") == 2


def test_a_renewal_waits_while_another_worker_charges_the_same_period(
    app, client, mocked, saved_card
):
    """Another worker holds this subscription period (its charge is under way): this delivery
    neither creates an order nor charges; once the other one has captured, it is done."""
    with db.transaction() as session:
        session.add(
            CleengPayment(
                operation="recurring-payment",
                event_key="cleeng:the-other-delivery",
                renewal_key="332332332:2026-12-22T09:00:00Z",
                subscription_id="332332332",
                status="charging",
            )
        )
    deliver(client, renewal_event())
    run_worker(app, mocked)
    with db.reader() as session:
        job = session.scalar(select(Job).where(Job.kind == "cleeng_renewal"))
    assert job.state == JobState.DEAD  # retried, then given up: an operator looks
    assert "under way" in job.last_error
    assert not sent(mocked, "POST", ORDERS_URL)
    assert not sent(mocked, "POST", INTENTS_URL)

    with db.transaction() as session:
        session.execute(
            CleengPayment.__table__.update()
            .where(CleengPayment.event_key == "cleeng:the-other-delivery")
            .values(status="captured")
        )
    deliver(client, renewal_event(dunningAttemptDate="2026-12-22T10:00:00Z"))
    run_worker(app, mocked)
    assert not sent(mocked, "POST", INTENTS_URL)
    assert count(Job, Job.state == JobState.DONE, Job.kind == "cleeng_renewal") == 1


def test_cleeng_down_while_reporting_a_renewal_retries_the_report_not_the_charge(
    app, client, mocked, saved_card
):
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, json=charged())
    mocked.post(PAYMENTS_URL, status=503, json={"responseData": {}, "errors": ["down"]})
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment()))
    deliver(client, renewal_event())
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", ORDERS_URL)) == 1
    assert len(sent(mocked, "POST", INTENTS_URL)) == 1
    first, second = sent(mocked, "POST", PAYMENTS_URL)
    assert body(first) == body(second)
    assert count(Job, Job.state == JobState.DONE, Job.kind == "cleeng_renewal") == 1


def test_renewal_without_a_saved_card_alerts_an_operator(app, client, mocked, caplog):
    deliver(client, renewal_event(token=None, paymentDetailsId=111))
    run_worker(app, mocked)
    assert count(Job, Job.state == JobState.DEAD) == 1
    assert "ALERT" in caplog.text
    assert "no saved Stripe card" in caplog.text
    assert not sent(mocked, "POST", INTENTS_URL)
    assert not sent(mocked, "POST", ORDERS_URL)
    with db.reader() as session:
        assert session.scalar(select(CleengPayment.renewal_key)) is None  # the period is free


# --- refunds and removed cards -------------------------------------------------------------------


def captured_renewal() -> None:
    with db.transaction() as session:
        session.add(
            CleengPayment(
                operation="recurring-payment",
                cleeng_order_id="444555666",
                cleeng_payment_id="1536331076",
                subscription_id="332332332",
                stripe_payment_intent_id="pi_2",
                stripe_payment_method_id="pm_1",
                payment_details_id="665665665",
                amount_minor=1210,
                currency="EUR",
                status="captured",
            )
        )


def refund_event(**data) -> dict:
    values = {
        "paymentId": 1536331076,
        "orderId": 444555666,
        "externalPaymentId": "pi_2",
        "amount": 12.1,
        "currency": "EUR",
        "refundedReason": "Requested by the customer",
    }
    values.update(data)
    return {"broadcasterId": 555000111, "topic": "refundPayment", "data": values}


def test_refund_goes_through_stripe_then_cleeng(app, client, mocked):
    captured_renewal()
    mocked.post(REFUNDS_URL, json={"id": "re_1", "object": "refund", "status": "succeeded"})
    mocked.patch(f"{PAYMENTS_URL}/1536331076", json=envelope(**cleeng_payment(status="refunded")))
    assert deliver(client, refund_event()).status_code == 200
    run_worker(app, mocked)
    (refund,) = sent(mocked, "POST", REFUNDS_URL)
    assert refund.headers["Idempotency-Key"].startswith("cleeng-refund-")
    assert form(refund.body) == {
        "payment_intent": "pi_2",
        "amount": "1210",
        "metadata[cleeng_payment_id]": "1536331076",
        "metadata[portal_platform_told]": "1",
    }
    (patch,) = sent(mocked, "PATCH", f"{PAYMENTS_URL}/1536331076")
    assert patch.headers["X-Publisher-Token"] == "cleeng-unit-token"
    assert body(patch) == {
        "orderId": 444555666,
        "status": "refunded",
        "paymentOperation": "recurring-payment",
        "refundedReason": "Requested by the customer",
        "amount": 12.1,
        "refundType": "refund",
        "externalPaymentId": "pi_2",
    }
    # The refund and the Cleeng update happen in that order: money first.
    order_of_calls = [
        c.request.method
        for c in mocked.calls
        if "refunds" in c.request.url or "payments/" in c.request.url
    ]
    assert order_of_calls == ["POST", "PATCH"]
    with db.reader() as session:
        payment = session.scalar(select(CleengPayment))
    assert (payment.status, payment.amount_refunded_minor) == ("refunded", 1210)


def test_cleeng_down_after_the_refund_retries_without_refunding_twice(app, client, mocked):
    captured_renewal()
    mocked.post(REFUNDS_URL, json={"id": "re_1", "object": "refund", "status": "succeeded"})
    mocked.patch(f"{PAYMENTS_URL}/1536331076", status=502, json={})
    mocked.patch(f"{PAYMENTS_URL}/1536331076", json=envelope(**cleeng_payment()))
    deliver(client, refund_event())
    run_worker(app, mocked)
    first, second = sent(mocked, "POST", REFUNDS_URL)  # the retry repeats the same request
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.body == second.body  # so Stripe answers it with the first refund
    assert len(sent(mocked, "PATCH", f"{PAYMENTS_URL}/1536331076")) == 2


def test_refund_of_an_unknown_payment_alerts_and_refunds_nothing(app, client, mocked, caplog):
    deliver(client, refund_event(paymentId=999, externalPaymentId="pi_unknown"))
    run_worker(app, mocked)
    assert not sent(mocked, "POST", REFUNDS_URL)
    assert "ALERT" in caplog.text


def test_deactivated_payment_details_detach_the_card(app, client, mocked):
    mocked.get(METHOD_URL, json=CARD)
    mocked.post(f"{METHOD_URL}/detach", json={**CARD, "customer": None})
    event = {
        "broadcasterId": 555000111,
        "topic": "paymentDetailsDeactivated",
        "data": {"paymentDetailsId": 665665665, "customerId": 927751142, "token": "pm_1"},
    }
    assert deliver(client, event).status_code == 200
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", f"{METHOD_URL}/detach")) == 1


def test_a_card_already_detached_is_left_alone(app, client, mocked):
    captured_renewal()  # Cleeng's event names the payment details only: the card is looked up
    mocked.get(METHOD_URL, json={**CARD, "customer": None})
    event = {
        "broadcasterId": 555000111,
        "topic": "paymentDetailsDeactivated",
        "data": {"paymentDetailsId": 665665665, "customerId": 927751142},
    }
    deliver(client, event)
    run_worker(app, mocked)
    assert len(sent(mocked, "GET", METHOD_URL)) == 1
    assert not sent(mocked, "POST", f"{METHOD_URL}/detach")
    assert count(Job, Job.state == JobState.DONE, Job.kind == "cleeng_detach") == 1


def test_an_operator_refund_in_the_console_is_told_to_cleeng(app, client, mocked, checkout_session):
    pay_and_return(client, mocked, checkout_session)
    order = find_order("cleeng", ORDER_ID)
    mocked.patch(f"{PAYMENTS_URL}/1536331075", json=envelope(**cleeng_payment()))
    outcome = app.extensions["portal"].platform("cleeng").refund(order, 500)
    assert "refunded" in outcome.note
    (patch,) = sent(mocked, "PATCH", f"{PAYMENTS_URL}/1536331075")
    assert body(patch) == {
        "orderId": int(ORDER_ID),
        "status": "refunded",
        "paymentOperation": "initial-payment",
        "refundedReason": "Refunded by the merchant",
        "amount": 5.0,
        "refundType": "refund",
        "externalPaymentId": "pi_1",
    }
