"""B2B buyers (merchant API sessions and pay links): per key and per session Stripe Checkout
options (billing and shipping address, tax id, invoice, promotion codes, phone), passed to Stripe
as its own parameters (the stand-in takes only those), and what Checkout collected on the order:
the API's GET /orders/{id}, the console and the receipt's invoice link."""

from __future__ import annotations

import re

import pytest
import requests

from portal import orders
from portal.api import keys
from portal.db import db
from portal.models import ApiKey
from tests.admin_support import make_user, sign_in
from tests.api_support import run_queued

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

CARD = {"email": "Buyer@Example.com", "card_number": "4242424242424242", "expiry": "12/40"}
B2B = {
    "billing_line1": "1 Analytical Row",
    "billing_postal_code": "EC1A 1BB",
    "billing_city": "London",
    "billing_country": "gb",
    "tax_id_type": "gb_vat",
    "tax_id_value": "GB123456789",
    "shipping_name": "Goods In",
    "shipping_line1": "2 Dock Road",
    "shipping_city": "Dublin",
    "shipping_country": "IE",
    "phone": "+44 20 7946 0000",
}


def new_key(server, **options):
    with server.app.app_context():
        made = keys.create_key(
            "B2B shop", allowed_hosts=["shop.test"], checkout_options=options or None
        )
    return {"Authorization": f"Bearer {made.secret}"}


def open_session(server, api, **extra):
    body = {
        "items": [{"name": "Seat licence", "unit_amount": 4900, "quantity": 40}],
        "currency": "gbp",
        "customer": {"email": "buyer@example.com", "company": "Analytical Engines plc"},
        "success_url": "https://shop.test/thanks",
        "cancel_url": "https://shop.test/cart",
        **extra,
    }
    answer = requests.post(
        f"{server.url}/api/v1/checkout-sessions", json=body, headers=api, timeout=10
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def to_stripe(server, browser, order_url) -> str:
    review = browser.get(order_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    moved = browser.post(f"{order_url}/pay", data={"csrf_token": token}, allow_redirects=False)
    assert moved.status_code == 303, moved.text
    return moved.headers["Location"]


def test_a_b2b_session_collects_tax_id_addresses_phone_and_makes_an_invoice(sandbox_server):
    server = sandbox_server()
    # The key's defaults: tax id and invoice; the session adds a shipping address and phone.
    api = new_key(server, tax_id_collection=True, invoice_creation=True)
    session = open_session(
        server,
        api,
        checkout_options={
            "shipping_address_countries": ["IE", "GB"],
            "phone_number_collection": True,
        },
    )
    order_id = session["order"]["id"]
    assert session["order"]["collected"] is None
    browser = requests.Session()
    stripe_page = to_stripe(server, browser, session["url"])
    page = browser.get(stripe_page).text
    for field in ("billing_line1", "tax_id_value", "shipping_line1", "phone", "invoice-note"):
        assert field in page
    created = server.store.list("checkout.session")[0]
    assert created["tax_id_collection"] == {"enabled": True}
    assert created["shipping_address_collection"] == {"allowed_countries": ["IE", "GB"]}
    assert created["phone_number_collection"] == {"enabled": True}
    assert created["invoice_creation"]["enabled"] is True
    # A missing part of what must be collected is refused, as Stripe's page refuses it.
    incomplete = browser.post(stripe_page, data={**CARD, "cvc": "123", **B2B, "phone": ""})
    assert incomplete.status_code == 400
    paid = browser.post(stripe_page, data={**CARD, "cvc": "123", **B2B}, allow_redirects=False)
    assert paid.status_code == 303, paid.text
    assert paid.headers["Location"].startswith(f"{server.url}/orders/")  # the return page
    assert browser.get(paid.headers["Location"], allow_redirects=False).status_code == 303
    order = requests.get(f"{server.url}/api/v1/orders/{order_id}", headers=api, timeout=10).json()
    collected = order["collected"]
    assert collected["email"] == "buyer@example.com"
    assert collected["tax_ids"] == [{"type": "gb_vat", "value": "GB123456789"}]
    assert collected["address"]["country"] == "GB"
    assert collected["phone"] == "+44 20 7946 0000"
    assert collected["shipping"]["address"]["country"] == "IE"
    invoice = collected["invoice"]
    assert invoice["id"].startswith("in_")
    assert invoice["number"].startswith("SANDBOX-")
    assert invoice["url"] == f"{server.url}/sandbox/stripe/invoices/{invoice['id']}"
    hosted = requests.get(invoice["pdf"], timeout=10)
    assert hosted.status_code == 200
    assert "GB123456789" in hosted.text
    # The receipt links the invoice.
    run_queued(server.app, "fulfil")
    run_queued(server.app, "mail")
    receipts = [m for m in server.store.list("mail") if "receipt" in m["subject"].lower()]
    assert receipts, [m["subject"] for m in server.store.list("mail")]
    assert invoice["pdf"] in receipts[0]["text"]
    assert invoice["pdf"] in receipts[0]["html"]
    # The console shows what was collected.
    with server.app.app_context():
        make_user("support@example.com", "operator")
    console = server.app.test_client()
    assert sign_in(console, "support@example.com").status_code == 303
    detail = console.get(f"/admin/orders/{order_id}").text
    assert "What Stripe Checkout collected" in detail
    assert "GB123456789" in detail
    assert invoice["url"] in detail


def test_promotion_codes_on_stripes_page_are_a_discount_not_an_amount_mismatch(sandbox_server):
    server = sandbox_server()
    api = new_key(server)
    session = open_session(server, api, checkout_options={"allow_promotion_codes": True})
    browser = requests.Session()
    stripe_page = to_stripe(server, browser, session["url"])
    wrong = browser.post(stripe_page, data={**CARD, "cvc": "123", "promotion_code": "NOPE"})
    assert wrong.status_code == 400
    assert "This code is invalid." in wrong.text
    paid = browser.post(
        stripe_page,
        data={**CARD, "cvc": "123", "promotion_code": "sandbox10"},
        allow_redirects=False,
    )
    assert paid.status_code == 303
    browser.get(paid.headers["Location"], allow_redirects=False)  # the return page
    order = requests.get(
        f"{server.url}/api/v1/orders/{session['order']['id']}", headers=api, timeout=10
    )
    assert order.json()["status"] == "paid"
    with server.app.app_context():
        from sqlalchemy import select

        from portal.models import OrderEvent

        stored = orders.get(session["order"]["id"])
        with db.reader() as db_session:
            alerts = db_session.scalars(
                select(OrderEvent).where(
                    OrderEvent.order_id == stored.id, OrderEvent.kind == "alert"
                )
            ).all()
    assert stored.amount_paid_minor == 196000 - 19600
    assert alerts == []


def test_unknown_checkout_option_is_refused(sandbox_server):
    server = sandbox_server()
    answer = requests.post(
        f"{server.url}/api/v1/checkout-sessions",
        timeout=10,
        json={
            "items": [{"name": "Seat", "unit_amount": 100, "quantity": 1}],
            "currency": "gbp",
            "customer": {"email": "buyer@example.com"},
            "success_url": "https://shop.test/thanks",
            "cancel_url": "https://shop.test/cart",
            "checkout_options": {"collect_everything": True},
        },
        headers=new_key(server),
    )
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "checkout_options[collect_everything]"


def test_create_api_key_command_keeps_the_checkout_options(runner):
    made = runner.invoke(
        args=[
            "portal",
            "create-api-key",
            "Wholesale",
            "--allowed-host",
            "shop.test",
            "--tax-id",
            "--invoice",
            "--billing-address",
            "required",
            "--shipping-country",
            "ie",
            "--shipping-country",
            "GB",
        ]
    )
    assert made.exit_code == 0, made.output
    assert "Checkout collects by default" in made.output
    with db.reader() as session:
        (key,) = session.query(ApiKey).all()
    assert key.checkout_options == {
        "billing_address_collection": "required",
        "shipping_address_countries": ["GB", "IE"],
        "tax_id_collection": True,
        "invoice_creation": True,
    }
    bad = runner.invoke(args=["portal", "create-api-key", "X", "--shipping-country", "Ireland"])
    assert bad.exit_code == 2


@pytest.mark.parametrize("flag", ["tax_id_collection", "invoice_creation"])
def test_stripe_gets_its_own_parameter_names(flag):
    from datetime import UTC, datetime

    from portal.stripe_gateway.session import CheckoutRequest, _collection_params

    request = CheckoutRequest(
        order_reference="ord_abcdefghijkl",
        platform="merchant",
        description="Seat",
        sku=None,
        currency="GBP",
        amount_minor=100,
        tax_minor=0,
        tax_label=None,
        automatic_tax=False,
        customer_email=None,
        locale="en",
        success_url="https://portal.test/ok",
        cancel_url="https://portal.test/back",
        expires_at=datetime.now(UTC),
        idempotency_key="k",
        **{flag: True},
    )
    params = _collection_params({"metadata": {"order_reference": "ord_abcdefghijkl"}}, request)
    assert params[flag]["enabled"] is True
