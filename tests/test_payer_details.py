"""Every order keeps the email Stripe collected (customer_details.email), from the return page or
the webhook, and support finds orders by it, by the platform's id of the learner, by the
purchase or order id, and by the Stripe ids."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from portal.db import db
from portal.models import Order, OrderState, utcnow
from portal.orders import find as find_order
from portal.orders import refresh as reload
from portal.sandbox.stripe_api import build_event
from tests.admin_support import make_order, make_user, sign_in
from tests.test_openlearning_sandbox import join, pay
from tests.test_webhooks import SESSION_URL, deliver, paid, paying_order

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

CUSTOMER_DETAILS = {
    "email": "Ada.Lovelace@Example.COM",
    "name": "Ada Lovelace",
    "phone": "+44 20 7946 0000",
    "address": {"country": "GB", "postal_code": "N1 9GU", "city": "London", "line1": "1 Main St"},
    "tax_exempt": "none",
    "tax_ids": [{"type": "gb_vat", "value": "GB123456789"}],
}


def test_the_webhook_stores_what_stripe_collected(client, mocked, checkout_session):
    order = paying_order()
    session = paid(checkout_session, order, customer_details=CUSTOMER_DETAILS)
    mocked.get(SESSION_URL, json=session)  # the webhook asks Stripe for the session again
    event = build_event("checkout.session.completed", session)
    assert deliver(client, event).status_code == 200
    stored = reload(order)
    assert stored.state in {OrderState.PAID, OrderState.FULFILLED, OrderState.FULFIL_FAILED}
    assert stored.payer_email == "ada.lovelace@example.com"
    assert stored.customer_email == "learner@example.com"  # the platform's stays as it was
    assert stored.checkout_details == {
        "name": "Ada Lovelace",
        "phone": "+44 20 7946 0000",
        "address": {
            "country": "GB",
            "postal_code": "N1 9GU",
            "city": "London",
            "line1": "1 Main St",
        },
        "tax_ids": [{"type": "gb_vat", "value": "GB123456789"}],
    }


@pytest.fixture
def orders(app):
    now = utcnow()
    return {
        "ol": make_order(
            platform="openlearning",
            platform_ref="b7c1e6f0-jti",
            customer_email=None,
            payer_email="grace@example.com",
            platform_data={"user": "5f1a2b3c4d5e6f7a8b9c0d1e", "kind": "class"},
            stripe_session_id="cs_test_ol",
            stripe_payment_intent_id="pi_test_ol",
            created_at=now - timedelta(days=1),
        ),
        "sj": make_order(
            platform_ref="p1ada",
            customer_email="Ada@Example.com",
            platform_data={"purchase_id": "p1ada", "user_id": "u1ada"},
            stripe_session_id="cs_test_sj",
            stripe_payment_intent_id="pi_test_sj",
            created_at=now - timedelta(days=2),
        ),
        "cl": make_order(
            platform="cleeng",
            platform_ref="714433781",
            customer_email="viewer@example.com",
            platform_data={"customer_id": "927751142"},
            stripe_session_id="cs_test_cl",
            created_at=now - timedelta(days=3),
        ),
    }


def listed(page_text: str) -> list[str]:
    body = page_text.split("<tbody>")[1] if "<tbody>" in page_text else ""
    return re.findall(r'href="/admin/orders/(ord_[\w-]+)"', body)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"email": "GRACE@example.com"}, ["ol"]),  # the email typed on Stripe's page
        ({"email": "ada@example.com"}, ["sj"]),  # the platform's email
        ({"platform_ref": "5f1a2b3c4d5e6f7a8b9c0d1e"}, ["ol"]),  # OpenLearning's user (sub)
        ({"platform_ref": "u1ada"}, ["sj"]),  # Skilljar's user id
        ({"platform_ref": "927751142"}, ["cl"]),  # Cleeng's customer id
        ({"platform_ref": "b7c1e6f0-jti"}, ["ol"]),  # the token's jti
        ({"platform_ref": "p1ada"}, ["sj"]),  # the purchase id
        ({"platform_ref": "714433781"}, ["cl"]),  # the Cleeng order id
        ({"stripe_id": "pi_test_ol"}, ["ol"]),
        ({"stripe_id": "cs_test_cl"}, ["cl"]),
        ({"platform_ref": "nobody"}, []),
    ],
)
def test_console_finds_orders_by_every_id_support_is_given(console, orders, query, expected):
    operator = console("operator")
    page = operator.get("/admin/orders", query_string=query)
    assert page.status_code == 200
    assert listed(page.text) == [orders[name].reference for name in expected]
    for name in expected:
        assert "—" not in page.text.split(orders[name].reference, 2)[-1].split("</tr>")[0]


def test_order_page_shows_the_email_paid_with(console, orders):
    page = console("operator").get(f"/admin/orders/{orders['ol'].reference}")
    assert "<dt>Paid with email</dt><dd>grace@example.com</dd>" in page.text


def test_an_openlearning_learner_paying_in_the_sandbox_is_found_by_the_email_they_typed(
    sandbox_server, fast_hashing
):
    server = sandbox_server(SANDBOX_WEBHOOK_DELAY_SECONDS="-1")
    browser = requests.Session()
    review, token = join(server, browser, "python-foundations", "ada")
    pay(server, browser, review)  # the stand-in's email field: ada@example.com
    with db.reader() as session:
        (order,) = session.scalars(select(Order).where(Order.platform == "openlearning")).all()
    assert order.customer_email is None  # OpenLearning's token carries no email
    assert order.payer_email == "ada@example.com"
    with server.app.app_context():
        make_user("support@example.com", "operator")
    client = server.app.test_client()
    assert sign_in(client, "support@example.com").status_code == 303
    found = client.get("/admin/orders", query_string={"email": "ada@example.com"})
    assert listed(found.text) == [order.reference]
    assert find_order("openlearning", order.platform_ref).payer_email == "ada@example.com"
