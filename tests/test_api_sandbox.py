"""The merchant API end to end over real HTTP, through the real `stripe` SDK and the sandbox's
Stripe stand-in: the demo ERP creates a manual-capture session, the customer pays on the sandbox
page, the merchant's webhook receiver gets (and verifies) `order.authorized`, the ERP captures
less than authorised on shipment and refunds part, and the caught pay-link email is shown."""

from __future__ import annotations

import re

import requests

from portal.jobs import Worker
from tests.api_support import run_queued

CARD = {
    "email": "buyer@example.com",
    "card_number": "4242424242424242",
    "expiry": "12/40",
    "cvc": "123",
    "name": "Ada Lovelace",
}


def deliver(server) -> None:
    run_queued(server.app, "webhook_delivery")


def erp_orders(server) -> list[dict]:
    return server.store.list("merchant_order")


def received(server) -> list[str]:
    return sorted(w["type"] for w in server.store.list("merchant_webhook"))


def demo_secret(server) -> str:
    return server.store.get("merchant_key", "demo")["secret"]


def test_authorise_pay_capture_and_refund_through_the_sandbox(sandbox_server):
    server = sandbox_server()
    browser = requests.Session()
    send = browser.post(
        f"{server.url}/sandbox/merchant/send",
        data={
            "email": "buyer@example.com",
            "item": "Seat licence",
            "unit_price": "49.00",
            "quantity": "40",
            "currency": "USD",
            "mode": "redirect",
            "manual": "1",
            "reference": "SO-9",
        },
        allow_redirects=False,
    )
    assert send.status_code == 303, send.text
    review_url = send.headers["Location"]
    assert re.fullmatch(rf"{server.url}/orders/ord_[\w-]+", review_url)
    order_id = review_url.rsplit("/", 1)[1]
    review = browser.get(review_url)
    assert "Pay $1,960.00" in review.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(f"{review_url}/pay", data={"csrf_token": token}, allow_redirects=False)
    stripe_page = to_stripe.headers["Location"]
    assert stripe_page.startswith(f"{server.url}/sandbox/stripe/pay/")
    paid = browser.post(stripe_page, data=CARD, allow_redirects=False)
    assert paid.status_code == 303
    thanks = browser.get(paid.headers["Location"])
    assert thanks.url == f"{server.url}/sandbox/merchant/thank-you"
    session = server.store.list("checkout.session")[0]
    assert session["payment_status"] == "unpaid"  # authorised, not captured
    intent = server.store.get("payment_intent", session["payment_intent"])
    assert intent["status"] == "requires_capture"

    deliver(server)
    assert received(server) == ["order.authorized"]

    api = {"Authorization": f"Bearer {demo_secret(server)}"}
    over = requests.post(
        f"{server.url}/api/v1/orders/{order_id}/capture",
        json={"amount": 196001},
        headers=api,
        timeout=10,
    )
    assert over.status_code == 400
    captured = requests.post(
        f"{server.url}/api/v1/orders/{order_id}/capture",
        json={"amount": 150000},
        headers=api,
        timeout=10,
    )
    assert captured.status_code == 200, captured.text
    assert captured.json()["status"] == "captured"
    intent = server.store.get("payment_intent", session["payment_intent"])
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 150000)

    too_much = requests.post(
        f"{server.url}/api/v1/refunds",
        json={"order": order_id, "amount": 150001},
        headers=api,
        timeout=10,
    )
    assert too_much.status_code == 400
    refund = browser.post(f"{server.url}/sandbox/merchant/orders/{order_id}/refund")
    assert refund.status_code == 200
    charge = server.store.get("charge", intent["latest_charge"])
    assert charge["amount_refunded"] == 150000
    deliver(server)
    assert received(server) == ["order.authorized", "order.captured", "order.refunded"]
    page = browser.get(f"{server.url}/sandbox/merchant")
    assert "order.refunded" in page.text
    assert order_id in page.text
    assert erp_orders(server)[0]["id"] == order_id


def test_cancel_voids_the_sandbox_authorisation(sandbox_server):
    server = sandbox_server()
    browser = requests.Session()
    send = browser.post(
        f"{server.url}/sandbox/merchant/send",
        data={
            "email": "b@example.com",
            "unit_price": "10",
            "quantity": "1",
            "currency": "EUR",
            "mode": "redirect",
            "manual": "1",
        },
        allow_redirects=False,
    )
    review_url = send.headers["Location"]
    review = browser.get(review_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    stripe_page = browser.post(
        f"{review_url}/pay", data={"csrf_token": token}, allow_redirects=False
    ).headers["Location"]
    browser.post(stripe_page, data=CARD)
    order_id = review_url.rsplit("/", 1)[1]
    cancelled = browser.post(f"{server.url}/sandbox/merchant/orders/{order_id}/cancel")
    assert "Cancel: done." in cancelled.text
    session = server.store.list("checkout.session")[0]
    assert server.store.get("payment_intent", session["payment_intent"])["status"] == "canceled"
    Worker(server.services).run(once=True)
    assert "order.cancelled" in received(server)


def test_pay_link_is_caught_and_shown_on_the_mail_page(sandbox_server):
    server = sandbox_server()
    browser = requests.Session()
    sent = browser.post(
        f"{server.url}/sandbox/merchant/send",
        data={
            "email": "buyer@example.com",
            "unit_price": "12.50",
            "quantity": "2",
            "currency": "GBP",
            "mode": "link",
            "sales_rep_email": "rep@demo.test",
        },
    )
    assert "Pay link for ord_" in sent.text
    run_queued(server.app, "mail")
    (mail,) = server.store.list("mail")
    assert mail["to"] == "buyer@example.com"
    assert mail["cc"] == "rep@demo.test"
    index = browser.get(f"{server.url}/sandbox/mail")
    assert mail["subject"] in index.text
    message = browser.get(f"{server.url}/sandbox/mail/{mail['id']}")
    (link,) = [link for link in mail["links"] if "/orders/" in link]
    assert link in message.text
    assert browser.get(link).status_code == 200
    html = browser.get(f"{server.url}/sandbox/mail/{mail['id']}/html")
    assert "£25.00" in html.text
    assert "style-src 'unsafe-inline'" in html.headers["Content-Security-Policy"]
    home = browser.get(f"{server.url}/sandbox/")
    assert "/sandbox/merchant" in home.text
