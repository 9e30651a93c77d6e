"""Cleeng end to end over real HTTP: the sandbox publisher page creates a Cleeng order and sends
the browser to the portal, the learner pays (or saves a card for a free trial) on the sandbox
Stripe page, the portal reports the payment to the sandbox Cleeng API and sends the learner to
the publisher's return page; then Cleeng's webhooks (a renewal, a refund, a removed card) are
sent to the portal and carried out by the job worker, through the real `stripe` SDK."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests

from portal.db import db
from portal.jobs import Worker
from portal.models import OrderState
from portal.orders import find as find_order

CARD = {"email": "ada@example.com", "expiry": "12/30", "cvc": "123", "name": "Ada Lovelace"}


@pytest.fixture
def server(sandbox_server):
    """The sandbox portal with Stripe's webhooks switched off: the learner's return page is what
    records the payment."""
    portal = sandbox_server(SANDBOX_WEBHOOK_DELAY_SECONDS="0")
    portal.control(webhook_delay_seconds=-1)
    yield portal
    db.engine.dispose()  # this process used the portal's database too: close its connections


def subscribe(server, browser, offer: str, **fields) -> requests.Response:
    """The publisher's Subscribe button: returns the portal's review page."""
    to_portal = browser.post(
        f"{server.url}/sandbox/cleeng/subscribe",
        data={"offer": offer, "email": "ada@example.com", **fields},
        allow_redirects=False,
    )
    assert to_portal.status_code == 303
    assert re.fullmatch(
        rf"{server.url}/cleeng/checkout\?orderId=\d+", to_portal.headers["Location"]
    )
    review = browser.get(to_portal.headers["Location"])
    assert review.status_code == 200, review.text
    return review


def cleeng_order_id(review: requests.Response) -> str:
    return parse_qs(urlsplit(review.url).query)["orderId"][0]


def pay(server, browser, review, card_number: str = "4242424242424242") -> requests.Response:
    """Pay (or save the card) on the sandbox Stripe page; returns the portal's answer to
    Stripe's success_url."""
    action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(server.url + action, data={"csrf_token": csrf}, allow_redirects=False)
    assert to_stripe.status_code == 303, to_stripe.text
    stripe_page = to_stripe.headers["Location"]
    assert stripe_page.startswith(f"{server.url}/sandbox/stripe/pay/")
    paid = browser.post(
        stripe_page, data={**CARD, "card_number": card_number}, allow_redirects=False
    )
    assert paid.status_code == 303, paid.text
    return browser.get(paid.headers["Location"], allow_redirects=False)


def calls(server, method: str, path: str) -> list[dict]:
    return [
        {**c, "json": json.loads(c["body"]) if c["body"] else None}
        for c in server.store.calls("cleeng")
        if c["method"] == method and c["path"] == path
    ]


def subscription_of(server, order_id: str) -> dict:
    (subscription,) = [
        s for s in server.store.list("cleeng.subscription") if s["orderId"] == order_id
    ]
    return subscription


def run_worker(server) -> dict:
    return Worker(server.services, poll_seconds=0).run(once=True)


def test_subscribe_with_a_coupon_pay_and_renew(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL", coupon="WELCOME20")
    text = review.text
    for expected in (
        "Premium Monthly",
        "€10.00",
        "WELCOME20",
        "−€2.00",
        "Tax (21%)",
        "+€1.68",
        "Then €12.10 per month from",
        "Pay €9.68",
    ):
        assert expected in text
    order_id = cleeng_order_id(review)

    back = pay(server, browser, review)
    assert back.status_code == 303
    assert back.headers["Location"] == f"{server.url}/sandbox/cleeng/return?orderId={order_id}"
    assert find_order("cleeng", order_id).state == OrderState.FULFILLED
    (report,) = calls(server, "POST", "/sandbox/cleeng/3.1/payments")
    assert report["status"] == 200
    body = report["json"]
    intent_id = body["externalPaymentId"]
    assert intent_id.startswith("pi_")
    token = body["paymentDetails"]["token"]
    assert token.startswith("pm_")
    assert body == {
        "orderId": int(order_id),
        "status": "captured",
        "paymentOperation": "initial-payment",
        "externalPaymentId": intent_id,
        "paymentDetails": {
            "token": token,
            "paymentMethodSpecificParams": {
                "holderName": "Ada Lovelace",
                "lastCardFourDigits": "4242",
                "variant": "visa",
                "cardExpirationDate": "12/2030",
            },
        },
    }
    intent = server.store.get("payment_intent", intent_id)
    assert (intent["amount"], intent["currency"]) == (968, "eur")
    method = server.store.get("payment_method", token)
    assert method["customer"] == intent["customer"] is not None  # saved for renewals
    page = browser.get(back.headers["Location"])
    assert "Welcome to Premium Monthly" in page.text

    # Cleeng's billing run: the renewal webhook, then the worker charges the saved card.
    subscription = subscription_of(server, order_id)
    renewal = browser.post(
        f"{server.url}/sandbox/cleeng/subscriptions/{subscription['id']}/renew",
        allow_redirects=False,
    )
    assert "status=200" in renewal.headers["Location"]
    run_worker(server)
    (recurring_order,) = calls(server, "POST", "/sandbox/cleeng/3.1/orders")
    assert recurring_order["json"]["paymentOperation"] == "recurring-payment"
    assert recurring_order["json"]["subscriptionId"] == int(subscription["id"])
    first, second = calls(server, "POST", "/sandbox/cleeng/3.1/payments")
    assert second["status"] == 200
    renewal_intent = server.store.get("payment_intent", second["json"]["externalPaymentId"])
    assert (renewal_intent["amount"], renewal_intent["status"]) == (1210, "succeeded")
    assert renewal_intent["payment_method"] == token
    assert second["json"]["status"] == "captured"
    assert second["json"]["paymentDetailsId"] == subscription["paymentDetailsId"]
    renewed = subscription_of(server, order_id)
    assert renewed["renewals"] == 1
    assert renewed["expiresAt"] > subscription["expiresAt"]
    page = browser.get(back.headers["Location"])
    assert re.search(rf'id="subscription-{subscription["id"]}-renewals">1<', page.text)


def test_a_renewal_sent_twice_is_charged_once(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    order_id = cleeng_order_id(review)
    pay(server, browser, review)
    subscription = subscription_of(server, order_id)
    renew_url = f"{server.url}/sandbox/cleeng/subscriptions/{subscription['id']}/renew"
    for _ in range(2):  # Cleeng resends until it hears 200: the same event twice
        assert "status=200" in browser.post(renew_url, allow_redirects=False).headers["Location"]
    run_worker(server)
    assert len(calls(server, "POST", "/sandbox/cleeng/3.1/orders")) == 1
    renewal_charges = [i for i in server.store.list("payment_intent") if i.get("description")]
    assert len(renewal_charges) == 1
    assert subscription_of(server, order_id)["renewals"] == 1


def test_free_trial_saves_the_card_and_reports_a_zero_payment(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000002_NL")
    assert "Start your free trial" in review.text
    assert "Total today" in review.text
    assert "€0.00" in review.text
    order_id = cleeng_order_id(review)
    back = pay(server, browser, review)
    assert back.headers["Location"] == f"{server.url}/sandbox/cleeng/return?orderId={order_id}"
    order = find_order("cleeng", order_id)
    assert (order.state, order.amount_paid_minor) == (OrderState.FULFILLED, 0)
    stripe_session = server.store.get("checkout.session", order.stripe_session_id)
    assert stripe_session["mode"] == "setup"
    assert stripe_session["customer"].startswith("cus_")
    assert not server.store.list("payment_intent")  # nothing was charged
    (report,) = calls(server, "POST", "/sandbox/cleeng/3.1/payments")
    assert report["json"]["status"] == "captured"
    assert report["json"]["externalPaymentId"] == stripe_session["setup_intent"]
    assert report["json"]["paymentDetails"]["token"].startswith("pm_")

    subscription = subscription_of(server, order_id)
    browser.post(
        f"{server.url}/sandbox/cleeng/subscriptions/{subscription['id']}/renew",
        allow_redirects=False,
    )
    run_worker(server)
    (charge,) = server.store.list("payment_intent")
    assert (charge["amount"], charge["status"]) == (12100, "succeeded")  # €100 + 21% VAT
    assert subscription_of(server, order_id)["renewals"] == 1


def test_declined_renewal_is_reported_rejected_and_a_later_attempt_charges_again(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000002_NL")
    order_id = cleeng_order_id(review)
    pay(server, browser, review, card_number="4000000000000341")  # saves; charges fail
    assert find_order("cleeng", order_id).state == OrderState.FULFILLED
    subscription = subscription_of(server, order_id)
    renew_url = f"{server.url}/sandbox/cleeng/subscriptions/{subscription['id']}/renew"
    browser.post(renew_url, allow_redirects=False)
    run_worker(server)
    rejected = calls(server, "POST", "/sandbox/cleeng/3.1/payments")[-1]
    assert rejected["status"] == 200
    assert rejected["json"]["status"] == "rejected"
    assert rejected["json"]["rejectedReason"] == "Your card was declined."
    assert rejected["json"]["paymentOperation"] == "recurring-payment"
    assert subscription_of(server, order_id)["failedAttempts"] == 1

    # Cleeng's dunning tries again later: a new attempt, a new charge (declined again).
    browser.post(renew_url, allow_redirects=False)
    run_worker(server)
    assert len(calls(server, "POST", "/sandbox/cleeng/3.1/orders")) == 2
    assert len(server.store.list("payment_intent")) == 2
    assert subscription_of(server, order_id)["failedAttempts"] == 2


def test_refund_and_card_removal_webhooks(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    order_id = cleeng_order_id(review)
    pay(server, browser, review)
    (payment,) = server.store.list("cleeng.payment")
    refund = browser.post(
        f"{server.url}/sandbox/cleeng/payments/{payment['id']}/refund", allow_redirects=False
    )
    assert "status=200" in refund.headers["Location"]
    run_worker(server)
    (stripe_refund,) = server.store.list("refund")
    assert (stripe_refund["amount"], stripe_refund["payment_intent"]) == (
        1210,
        payment["externalPaymentId"],
    )
    (patch,) = calls(server, "PATCH", f"/sandbox/cleeng/3.1/payments/{payment['id']}")
    assert patch["status"] == 200
    assert patch["json"]["status"] == "refunded"
    assert patch["json"]["amount"] == 12.1
    assert server.store.get("cleeng.payment", str(payment["id"]))["status"] == "refunded"

    (details,) = server.store.list("cleeng.payment_details")
    removed = browser.post(
        f"{server.url}/sandbox/cleeng/payment_details/{details['id']}/deactivate",
        data={"orderId": order_id},
        allow_redirects=False,
    )
    assert "status=200" in removed.headers["Location"]
    run_worker(server)
    assert server.store.get("payment_method", details["token"])["customer"] is None


def test_cleeng_outage_after_payment_is_retried_by_the_worker(server):
    server.control(cleeng_fault_rate=1)
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    order_id = cleeng_order_id(review)
    back = pay(server, browser, review)
    status_url = urljoin(server.url, back.headers["Location"])
    assert status_url.endswith("/status")
    assert "Payment received" in browser.get(status_url, allow_redirects=False).text
    assert find_order("cleeng", order_id).state == OrderState.PAID
    assert {c["status"] for c in calls(server, "POST", "/sandbox/cleeng/3.1/payments")} == {503}

    server.control(cleeng_fault_rate=0)
    run_worker(server)
    assert find_order("cleeng", order_id).state == OrderState.FULFILLED
    assert calls(server, "POST", "/sandbox/cleeng/3.1/payments")[-1]["status"] == 200
    final = browser.get(status_url, allow_redirects=False)
    assert final.headers["Location"] == f"{server.url}/sandbox/cleeng/return?orderId={order_id}"


def test_a_split_authorisation_then_capture_charges_once_through_the_real_sdk(server):
    """Issue 26: the sandbox's "Send authorisation, then capture": the portal holds the renewal
    on the card (a PaymentIntent with capture_method=manual, checked against the SDK's own
    parameters by the Stripe stand-in), reports `authorized`, then captures the same hold and
    updates the payment to `captured`; the subscription is extended once."""
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    order_id = cleeng_order_id(review)
    pay(server, browser, review)
    subscription = subscription_of(server, order_id)
    back = browser.post(
        f"{server.url}/sandbox/cleeng/subscriptions/{subscription['id']}/renew",
        data={"split": "1", "wait": "0"},
        allow_redirects=False,
    )
    assert "status=200" in back.headers["Location"]
    run_worker(server)
    run_worker(server)
    renewals = [i for i in server.store.list("payment_intent") if i.get("description")]
    assert len(renewals) == 1
    (intent,) = renewals
    assert (intent["capture_method"], intent["status"], intent["amount_received"]) == (
        "manual",
        "succeeded",
        1210,
    )
    (authorised,) = [
        c["json"]
        for c in calls(server, "POST", "/sandbox/cleeng/3.1/payments")
        if c["json"]["paymentOperation"] == "recurring-payment"
    ]
    assert authorised["status"] == "authorized"
    assert authorised["externalPaymentId"] == intent["id"]
    patches = [c for c in server.store.calls("cleeng") if c["method"] == "PATCH"]
    assert [json.loads(c["body"])["status"] for c in patches] == ["captured"]
    assert subscription_of(server, order_id)["renewals"] == 1
