"""The status page of an order whose Stripe Checkout Session is still open (`paying`): the learner
may well have paid and the confirmation is on its way, so the page says the payment is being
confirmed and keeps checking by itself (never "checkout expired")."""

from __future__ import annotations

from portal.models import OrderState
from tests.admin_support import make_order
from tests.conftest import STRIPE_BASE

SESSION_URL = f"{STRIPE_BASE}/v1/checkout/sessions/cs_test_1"


def paying_order():
    return make_order(state=OrderState.PAYING, stripe_session_id="cs_test_1")


def test_a_paying_order_is_being_confirmed_and_the_page_keeps_checking(
    client, mocked, checkout_session
):
    order = paying_order()
    mocked.get(SESSION_URL, json=checkout_session(client_reference_id=order.reference))
    response = client.get(f"/orders/{order.reference}/status")
    assert response.status_code == 200
    page = response.text
    assert "<h1>We are confirming your payment</h1>" in page
    assert "Please do not pay again." in page
    assert "expired" not in page
    assert "checks again by itself every 3 seconds" in page
    assert f'href="/orders/{order.reference}">Return to your order</a>' in page
    refresh = response.headers["Refresh"]
    assert refresh == f"3; url=/orders/{order.reference}/status?check=1"
    assert response.headers["Cache-Control"] == "no-store"
    # Stripe was asked (the page moves on as soon as Stripe says the session completed).
    assert [c.request.url for c in mocked.calls] == [SESSION_URL]
    # The back-off and the learner's "stop" still apply.
    later = client.get(f"/orders/{order.reference}/status?check=30")
    assert later.headers["Refresh"].startswith("10; ")
    stopped = client.get(f"/orders/{order.reference}/status?auto=0")
    assert "Refresh" not in stopped.headers
    assert "Automatic updates are off." in stopped.text


def test_the_paying_status_page_in_french(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=checkout_session(client_reference_id=order.reference))
    page = client.get(f"/orders/{order.reference}/status", headers={"Accept-Language": "fr"}).text
    assert "<h1>Nous confirmons votre paiement</h1>" in page
    assert "Veuillez ne pas payer une seconde fois." in page
    assert "Revenir à votre commande" in page


def test_an_expired_order_still_says_expired(client):
    order = make_order(state=OrderState.EXPIRED)
    response = client.get(f"/orders/{order.reference}/status")
    assert "Your checkout has expired" in response.text
    assert "Refresh" not in response.headers


def test_a_paid_merchant_order_shows_no_tax_line_of_zero(client):
    """A merchant's prices are what it charges and its own system does the tax: its paid order's
    page shows the total paid without a "Tax $0.00" line; a platform order keeps its tax line."""
    merchant = make_order(
        platform="merchant", platform_ref="inv-1", redirect_url=None, platform_data={}
    )
    page = client.get(f"/orders/{merchant.reference}/status").text
    assert "<dt>Tax</dt>" not in page
    assert '<dt class="total">Total paid</dt><dd class="total">$78.40</dd>' in page
    # The same for any platform when no tax applies (issue 27: not "Tax $0.00" everywhere) ...
    untaxed = make_order(platform_ref="p2abc", redirect_url=None)
    assert "<dt>Tax</dt>" not in client.get(f"/orders/{untaxed.reference}/status").text
    # ... and a tax line when tax applies: the portal's tax mode, even at a zero rate, or tax
    # Stripe charged.
    fixed = make_order(platform_ref="p3abc", redirect_url=None, tax_mode="fixed")
    assert "<dt>Tax</dt><dd>$0.00</dd>" in client.get(f"/orders/{fixed.reference}/status").text
    charged = make_order(platform_ref="p4abc", redirect_url=None, tax_paid_minor=784)
    assert "<dt>Tax</dt><dd>$7.84</dd>" in client.get(f"/orders/{charged.reference}/status").text
