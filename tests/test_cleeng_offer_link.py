"""The portal creates the first Cleeng order from an offer (issue 26), opt-in: a link the
publisher's server signed (`PORTAL_CLEENG_OFFER_LINK_SECRET`) with the offer, the Cleeng customer
and an expiry. The portal `POST`s `/3.1/orders` and sends the browser on to that order's payment
page; every price comes from Cleeng's answer, and nothing in the link can set one."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from portal.platforms.cleeng.offer_link import offer_link_signature
from tests.test_cleeng import (
    ORDER_ID,
    ORDER_URL,
    ORDERS_URL,
    SETTINGS,
    body,
    cleeng_order,
    envelope,
    sent,
)

SECRET = "offer-link-secret-1"


@pytest.fixture
def app(make_app):
    return make_app(**SETTINGS, CLEENG_OFFER_LINK_SECRET=f"old-secret,{SECRET}")


def link(secret: str = SECRET, **overrides) -> str:
    params = {
        "offerId": "S619117184_NL",
        "customerId": "927751142",
        "couponCode": "WELCOME20",
        "expires": str(int(time.time()) + 600),
    }
    params.update(overrides)
    params = {k: v for k, v in params.items() if v is not None}
    signed = {**params, "signature": offer_link_signature(params, secret)}
    return "/cleeng/checkout?" + urlencode(signed)


def test_a_signed_offer_link_creates_the_order_and_goes_to_its_payment_page(client, mocked):
    mocked.post(ORDERS_URL, json=envelope(order=cleeng_order()))
    created = client.get(link())
    assert created.status_code == 303
    assert created.headers["Location"] == f"/cleeng/checkout?orderId={ORDER_ID}"
    (request,) = sent(mocked, "POST", ORDERS_URL)
    assert request.headers["X-Publisher-Token"] == "cleeng-unit-token"
    assert body(request) == {
        "customerId": 927751142,
        "offerId": "S619117184_NL",
        "paymentMethodId": 900000001,
        "couponCode": "WELCOME20",
    }
    mocked.get(ORDER_URL, json=envelope(order=cleeng_order()))
    review = client.get(created.headers["Location"])
    assert review.status_code == 200
    assert "Pay €9.68" in review.text  # Cleeng's price, from Cleeng's answer


def test_currency_and_country_are_signed_and_passed_on(client, mocked):
    mocked.post(ORDERS_URL, json=envelope(order=cleeng_order()))
    assert client.get(link(currency="EUR", country="NL", couponCode=None)).status_code == 303
    (request,) = sent(mocked, "POST", ORDERS_URL)
    assert body(request)["currency"] == "EUR"
    assert body(request)["country"] == "NL"
    assert "couponCode" not in body(request)


def tampered(field: str, value: str) -> str:
    """A genuine link with one value changed after signing."""
    url = link()
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    params[field] = value
    return "/cleeng/checkout?" + urlencode(params)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param(lambda: tampered("offerId", "S999999999_NL"), id="another offer"),
        pytest.param(lambda: tampered("customerId", "111111111"), id="another customer"),
        pytest.param(lambda: tampered("couponCode", "FREE100"), id="another coupon"),
        pytest.param(lambda: tampered("couponCode", ""), id="coupon removed"),
        pytest.param(lambda: tampered("expires", str(int(time.time()) + 9999)), id="expiry moved"),
        pytest.param(lambda: tampered("signature", "0" * 64), id="zero signature"),
        pytest.param(lambda: tampered("signature", ""), id="empty signature"),
        pytest.param(lambda: link(secret="not-the-secret"), id="wrong key"),
        pytest.param(lambda: link(expires=str(int(time.time()) - 1)), id="expired"),
        pytest.param(lambda: link(expires=str(int(time.time()) + 8 * 86400)), id="too far"),
        pytest.param(lambda: link(expires="1e12"), id="expiry not digits"),
        pytest.param(lambda: link(customerId="../1"), id="customer not digits"),
        pytest.param(lambda: link(offerId="S1<script>"), id="offer id odd"),
        pytest.param(lambda: link(currency="XXX1"), id="currency unknown"),
        pytest.param(lambda: link(country="nl"), id="country lowercase"),
    ],
)
def test_a_link_not_exactly_as_signed_is_refused_before_any_call(client, mocked, url):
    response = client.get(url())
    assert response.status_code == 400
    assert "This checkout link is not valid" in response.text
    assert not sent(mocked, "POST", ORDERS_URL)


def test_extra_parameters_never_set_a_price(client, mocked):
    mocked.post(ORDERS_URL, json=envelope(order=cleeng_order()))
    genuine = link()
    created = client.get(genuine + "&totalPrice=0.01&amount=1&currency=JPY")
    assert created.status_code == 400  # currency is a signed field: changing it breaks the link
    created = client.get(genuine + "&totalPrice=0.01&amount=1")
    assert created.status_code == 303
    assert set(body(sent(mocked, "POST", ORDERS_URL)[0])) == {
        "customerId",
        "offerId",
        "paymentMethodId",
        "couponCode",
    }


def test_without_the_setting_offer_links_are_not_taken(make_app, mocked):
    client = make_app(**SETTINGS).test_client()
    response = client.get(link())
    assert response.status_code == 404
    assert not sent(mocked, "POST", ORDERS_URL)


@pytest.mark.parametrize(("status", "shown"), [(404, 404), (422, 404), (503, 503)])
def test_cleeng_refusing_or_down_is_a_clear_page(client, mocked, status, shown):
    mocked.post(
        ORDERS_URL, status=status, json={"responseData": {}, "errors": ["Offer not found."]}
    )
    response = client.get(link())
    assert response.status_code == shown
    assert "Traceback" not in response.text
