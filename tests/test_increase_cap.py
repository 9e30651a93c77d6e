"""The merchant API's increase cap (issue 26, the Credit Key seed): an authorised total may grow
by up to an absolute amount per currency (`PORTAL_AUTH_INCREASE_LIMIT`, default $100) and is
raised in place; more, or a currency without a cap, sends the customer a new pay link. The
percentage (`PORTAL_AUTH_INCREASE_LIMIT_PERCENT`) stays as an option: the larger limit wins."""

from __future__ import annotations

import pytest

from portal.config import ConfigError, load_settings
from tests.api_support import ApiClient, authorise, make_key, order_row, session_body
from tests.conftest import STRIPE_BASE

PI = f"{STRIPE_BASE}/v1/payment_intents"


def authorised(app, api, mocked, **body) -> dict:
    order = api.post("/checkout-sessions", session_body(capture_method="manual", **body)).json
    authorise(app, mocked, order["order"]["id"], manual=True, stripe_base=STRIPE_BASE)
    return order["order"]


def items(seats: int) -> dict:
    body = session_body()["items"]
    body[0]["quantity"] = seats
    return {"items": body}


@pytest.fixture
def setup(make_app):
    def factory(**settings):
        app = make_app(SMTP_URL="smtp://127.0.0.1:2525", **settings)
        return app, ApiClient(app.test_client(), make_key().secret)

    return factory


def test_an_increase_up_to_100_dollars_raises_the_hold_in_place(setup, mocked):
    app, api = setup()
    order = authorised(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{pi}/increment_authorization", json={"id": pi, "amount": 225900})
    answer = api.patch(f"/orders/{order['id']}", items(41)).json  # +$49.00
    assert answer["approval_required"] is False
    assert answer["order"]["amount_authorized"] == 225900


def test_an_increase_over_100_dollars_needs_the_customer_again(setup, mocked):
    app, api = setup()
    order = authorised(app, api, mocked)
    answer = api.patch(f"/orders/{order['id']}", items(43)).json  # +$147.00
    assert answer["approval_required"] is True
    assert not [c for c in mocked.calls if "increment_authorization" in c.request.url]


def test_a_currency_without_a_cap_sends_every_increase_to_the_customer(setup, mocked):
    app, api = setup()
    order = authorised(app, api, mocked, currency="eur")
    answer = api.patch(f"/orders/{order['id']}", items(41)).json
    assert answer["approval_required"] is True


def test_the_percentage_is_an_option_and_the_larger_limit_wins(setup, mocked):
    app, api = setup(AUTH_INCREASE_LIMIT="none", AUTH_INCREASE_LIMIT_PERCENT="10")
    order = authorised(app, api, mocked, currency="eur")
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{pi}/increment_authorization", json={"id": pi, "amount": 235700})
    answer = api.patch(f"/orders/{order['id']}", items(43)).json  # +147.00 of 2,210.00
    assert answer["approval_required"] is False


def test_the_cap_setting_is_parsed_per_currency():
    settings = load_settings({"AUTH_INCREASE_LIMIT": "usd:100, EUR:90.50, JPY:15000"}, environ={})
    assert settings.auth_increase_limit == {"USD": 10000, "EUR": 9050, "JPY": 15000}
    assert load_settings({}, environ={}).auth_increase_limit == {"USD": 10000}
    with pytest.raises(ConfigError, match="PORTAL_AUTH_INCREASE_LIMIT"):
        load_settings({"AUTH_INCREASE_LIMIT": "USD:12.345"}, environ={})
    with pytest.raises(ConfigError, match="PORTAL_AUTH_INCREASE_LIMIT"):
        load_settings({"AUTH_INCREASE_LIMIT": "XYZ:10"}, environ={})
