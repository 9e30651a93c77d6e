"""Stripe's page shows what the review page showed: the quantity at its unit price, and a promo
as Stripe shows discounts (a one-use coupon on the session). The sandbox stand-in takes only
parameters real Stripe takes, and shows the same lines."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
import requests

from portal.models import OrderState
from portal.orders import find as find_order
from portal.sandbox.skilljar_api import new_purchase
from portal.stripe_gateway import CheckoutRequest, Lines, product_lines

CARD = {"email": "ada@example.com", "card_number": "4242424242424242", "expiry": "12/39"}


def request_for(**overrides) -> CheckoutRequest:
    values = {
        "order_reference": "ord_abcdefghijkl",
        "platform": "skilljar",
        "description": "Data Science for Teams (per seat)",
        "sku": None,
        "currency": "EUR",
        "amount_minor": 24000,
        "tax_minor": 0,
        "tax_label": None,
        "automatic_tax": False,
        "customer_email": None,
        "locale": "en",
        "success_url": "https://portal.test/ok",
        "cancel_url": "https://portal.test/back",
        "expires_at": datetime.now(UTC),
        "idempotency_key": "ord_abcdefghijkl-attempt-1",
        "quantity": 2,
        "list_unit_minor": 12000,
    }
    return CheckoutRequest(**{**values, **overrides})


@pytest.mark.parametrize(
    ("overrides", "lines"),
    [
        pytest.param({}, Lines("Data Science for Teams (per seat)", 12000, 2), id="two-seats"),
        pytest.param(
            {"amount_minor": 19200, "promo_code": "LAUNCH20"},
            Lines("Data Science for Teams (per seat)", 12000, 2, 4800),
            id="promo-as-discount",
        ),
        pytest.param(
            {"amount_minor": 10001, "list_unit_minor": None},
            Lines("Data Science for Teams (per seat) (× 2)", 10001, 1),
            id="uneven-total-one-line",
        ),
        pytest.param(
            {"amount_minor": 24000, "promo_code": "NOTHING"},
            Lines("Data Science for Teams (per seat)", 12000, 2),
            id="promo-without-saving",
        ),
        pytest.param(
            {"amount_minor": 999, "quantity": 1, "list_unit_minor": None},
            Lines("Data Science for Teams (per seat)", 999, 1),
            id="one",
        ),
        pytest.param(
            {"amount_minor": 300, "quantity": 3, "currency": "JPY", "list_unit_minor": None},
            Lines("Data Science for Teams (per seat)", 100, 3),
            id="yen",
        ),
    ],
)
def test_product_lines(overrides, lines):
    got = product_lines(request_for(**overrides))
    assert got == lines
    # Whatever the shape, Stripe's total is the order's.
    assert (
        got.unit_amount * got.quantity - got.discount_minor == request_for(**overrides).amount_minor
    )


# --- the sandbox stand-in -----------------------------------------------------------------------


def stripe_post(server, path, data):
    key = server.app.config["PORTAL"].stripe_secret_key
    return requests.post(
        f"{server.url}/sandbox/stripe/v1/{path}",
        data=data,
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )


SESSION = {
    "mode": "payment",
    "success_url": "https://academy.test/ok",
    "line_items[0][quantity]": "2",
    "line_items[0][price_data][currency]": "eur",
    "line_items[0][price_data][unit_amount]": "12000",
    "line_items[0][price_data][product_data][name]": "Seat",
}


@pytest.fixture
def server(sandbox_server):
    return sandbox_server()


def test_sandbox_coupon_takes_only_stripes_parameters(server):
    unknown = stripe_post(server, "coupons", {"amount_of": "100", "currency": "eur"})
    assert unknown.status_code == 400
    assert unknown.json()["error"]["param"] == "amount_of"
    both = stripe_post(
        server, "coupons", {"amount_off": "1", "percent_off": "5", "currency": "eur"}
    )
    assert both.status_code == 400
    long_name = stripe_post(
        server, "coupons", {"amount_off": "100", "currency": "eur", "name": "x" * 41}
    )
    assert long_name.status_code == 400


def test_sandbox_session_discount_rules(server):
    coupon = stripe_post(
        server,
        "coupons",
        {"amount_off": "4800", "currency": "eur", "duration": "once", "max_redemptions": "1"},
    ).json()
    missing = stripe_post(server, "checkout/sessions", {**SESSION, "discounts[0][coupon]": "co_x"})
    assert missing.status_code == 400
    assert missing.json()["error"]["code"] == "resource_missing"
    both = stripe_post(
        server,
        "checkout/sessions",
        {**SESSION, "discounts[0][coupon]": coupon["id"], "allow_promotion_codes": "true"},
    )
    assert both.status_code == 400
    assert "allow_promotion_codes" in both.json()["error"]["message"]
    wrong_currency = stripe_post(
        server,
        "checkout/sessions",
        {
            **SESSION,
            "line_items[0][price_data][currency]": "usd",
            "discounts[0][coupon]": coupon["id"],
        },
    )
    assert wrong_currency.status_code == 400
    made = stripe_post(
        server, "checkout/sessions", {**SESSION, "discounts[0][coupon]": coupon["id"]}
    )
    assert made.status_code == 200, made.text
    session = made.json()
    assert session["amount_subtotal"] == 24000
    assert session["amount_total"] == 19200
    assert session["total_details"]["amount_discount"] == 4800
    assert session["discounts"] == [{"coupon": coupon["id"], "promotion_code": None}]


def test_two_seats_with_a_promo_show_on_stripes_page_as_on_the_review_and_pay_exactly(server):
    with server.app.app_context():
        purchase = new_purchase("data-team", quantity=2, promo="launch20")
    browser = requests.Session()
    review = browser.get(f"{server.url}/skilljar/checkout?purchase_id={purchase['id']}")
    assert review.status_code == 200
    assert "€192.00" in review.text
    action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(server.url + action, data={"csrf_token": csrf}, allow_redirects=False)
    assert to_stripe.status_code == 303
    page = browser.get(to_stripe.headers["Location"])
    summary = re.search(r'<dl class="lines" id="line-items".*?</dl>', page.text, re.S).group(0)
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", summary))
    assert "Data Science for Teams (per seat)" in text
    assert "Qty 2 · €120.00 each" in text
    assert "€240.00" in text
    assert "LAUNCH20 −€48.00" in text
    assert "Total due €192.00" in text
    assert "1 × " not in page.text
    paid = browser.post(to_stripe.headers["Location"], data={**CARD, "cvc": "123"})
    assert paid.status_code == 200
    with server.app.app_context():
        order = find_order("skilljar", purchase["id"])
    assert order.amount_paid_minor == 19200
    assert order.state in {OrderState.PAID, OrderState.FULFILLED}
