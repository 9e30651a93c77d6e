"""Issue 24's reproductions from the outside probe, each through the entry point the probe used
(the merchant API, OpenLearning's enrolment POST, Stripe's webhook, the console, the CLI, the
settings), on SQLite and PostgreSQL. Each answer must be a clear 4xx (or a refusal at start-up),
never a 500, and nothing may be stored."""

from __future__ import annotations

import dataclasses
import json
import time

import pytest
from sqlalchemy import func, select

from portal import ConfigError, jsonlimits
from portal.db import db
from portal.models import ApiKey, Order, OrderState, StripeEvent
from portal.sandbox.stripe_api import build_event, sign
from tests.admin_support import make_order
from tests.api_support import ApiClient, make_key, session_body
from tests.test_openlearning import OL_SETTINGS, claims, join
from tests.test_openlearning import sign as sign_token
from tests.test_webhooks import paid, paying_order

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

BACKSLASH = "http://evil.example\\@shop.example.com/ok"


def order_count() -> int:
    with db.reader() as session:
        return session.scalar(select(func.count()).select_from(Order))


@pytest.fixture
def api(client):
    return ApiClient(client, make_key().secret)


def refused(response, status: int = 400) -> None:
    assert response.status_code == status, response.text
    assert "Traceback" not in response.text


# --- 1. /admin/settings shows passwords inside URLs ----------------------------------------------


def test_settings_page_masks_the_passwords_in_url_settings(app, console):
    app.config["PORTAL"] = dataclasses.replace(
        app.config["PORTAL"],
        smtp_url="smtp://mailer:smtp-pass-4711@mail.example.com:587",
        ratelimit_storage_url="redis://:redis-pass-4712@redis.example.com:6379/0",
        sandbox_database_url="postgresql://portal:pg-pass-4713@db.example.com/sandbox",
    )
    page = console("admin").get("/admin/settings").text
    for secret in ("smtp-pass-4711", "redis-pass-4712", "pg-pass-4713"):
        assert secret not in page
    assert "smtp://mailer:***@mail.example.com:587" in page
    assert "redis://:***@redis.example.com:6379/0" in page


# --- 2. backslash redirects -----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["success_url", "cancel_url"])
def test_api_refuses_a_backslash_url_that_urlsplit_reads_as_an_allowed_host(api, field):
    response = api.post("/checkout-sessions", session_body(**{field: BACKSLASH}))
    refused(response)
    assert response.json["error"]["code"] == "url_invalid"
    assert response.json["error"]["param"] == field
    assert "backslash" in response.json["error"]["message"]
    assert order_count() == 0


def test_openlearning_refuses_a_backslash_redirect_url(make_app):
    client = make_app(**OL_SETTINGS).test_client()
    url = "https://evil.example\\@www.openlearning.com/unit-institution/courses/x/"
    refused(join(client, sign_token(claims(redirect_url=url))))
    assert order_count() == 0


def test_status_page_never_links_to_a_stored_backslash_url(app, client):
    order = make_order(
        state=OrderState.FULFILLED, redirect_url="https://evil.example\\@academy.test/thanks"
    )
    page = client.get(f"/orders/{order.reference}/status")
    assert page.status_code == 200
    assert "evil.example" not in page.text


# --- 3 and 4. numbers and currencies --------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": 1e30},
        {"exp": 10**30},
        {"iat": 1e30},
        {"nbf": -1e30},
        {"price": "99999999999999999999.00"},
        {"price": 1e308},
        {"price": "1e10"},
        {"price": "١٤٩.٠٠"},  # Arabic-Indic digits: 149.00 to Python's Decimal
        {"price": "１４９.００"},  # full-width digits
        {"price": 10**20},
        {"currency": "XXX"},
        {"currency": "XTS"},
        {"currency": "XAU"},
    ],
    ids=lambda o: "-".join(f"{k}={v!r}" for k, v in o.items()),
)
def test_openlearning_token_numbers_are_bounded_and_refused_with_a_4xx(make_app, overrides):
    client = make_app(**OL_SETTINGS).test_client()
    refused(join(client, sign_token(claims(**overrides))))
    assert order_count() == 0


@pytest.mark.parametrize("currency", ["XXX", "xts", "XAU", "XDR", "USN"])
def test_api_refuses_currencies_stripe_does_not_charge_in(api, currency):
    response = api.post("/checkout-sessions", session_body(currency=currency))
    refused(response)
    assert response.json["error"]["code"] == "currency_invalid"
    assert order_count() == 0


@pytest.mark.parametrize(
    "amount",
    ["1e308", "1e10", "99999999999999999999", "12.5", "4900.0", "4.9e3", '"4900"', "-1", "NaN"],
)
@pytest.mark.parametrize("field", ["unit_amount", "quantity"])
def test_api_refuses_amounts_that_are_not_bounded_integers(api, field, amount):
    body = json.dumps(session_body(items=[{"name": "Seat", "unit_amount": 4900, "quantity": 1}]))
    raw = body.replace(
        f'"{field}": {4900 if field == "unit_amount" else 1}', f'"{field}": {amount}'
    )
    assert amount in raw
    response = api.post(
        "/checkout-sessions", raw=raw.encode(), headers={"Content-Type": "application/json"}
    )
    refused(response)
    assert order_count() == 0


@pytest.mark.parametrize("depth", [33, 5_000, 100_000])
@pytest.mark.parametrize("shape", ["[", '{"a":'])
def test_api_refuses_deeply_nested_json_with_a_400(client, api, depth, shape):
    closing = "]" if shape == "[" else "}"
    nested = shape * depth + "1" + closing * depth
    raw = json.dumps(session_body(metadata={"x": "PLACEHOLDER"})).replace('"PLACEHOLDER"', nested)
    response = api.post(
        "/checkout-sessions", raw=raw.encode(), headers={"Content-Type": "application/json"}
    )
    refused(response, 413 if len(raw) > 64 * 1024 else 400)
    if response.status_code == 400:
        assert "nested" in response.json["error"]["message"]
    assert order_count() == 0


@pytest.mark.parametrize("field", ["reference", "customer.name", "items.name", "metadata"])
def test_api_refuses_nul_characters_with_a_400_on_every_database(api, field):
    body = session_body()
    if field == "reference":
        body["reference"] = "SO-\x001"
    elif field == "customer.name":
        body["customer"]["name"] = "Ada\x00"
    elif field == "items.name":
        body["items"][0]["name"] = "Seat\x00licence"
    else:
        body["metadata"] = {"erp": "1\x00"}
    response = api.post("/checkout-sessions", body)
    refused(response)
    assert "NUL" in response.json["error"]["message"]
    assert order_count() == 0


def test_openlearning_refuses_a_deeply_nested_token(make_app):
    client = make_app(**OL_SETTINGS).test_client()
    payload = json.dumps(claims()).encode()[:-1] + b',"x":' + b"[" * 2000 + b"]" * 2000 + b"}"
    refused(join(client, sign_token(payload)))


# --- 5. Stripe webhooks timestamped in the future -------------------------------------------------


@pytest.mark.parametrize("offset", [3600, 301, 10**9])
def test_stripe_webhook_signed_in_the_future_is_refused_before_anything(
    client, mocked, checkout_session, offset
):
    order = paying_order()
    event = json.dumps(build_event("checkout.session.completed", paid(checkout_session, order)))
    response = client.post(
        "/webhooks/stripe",
        data=event,
        content_type="application/json",
        headers={"Stripe-Signature": sign(event, "whsec_unit_1", int(time.time()) + offset)},
    )
    refused(response)
    assert response.json["error"]["code"] == "bad_signature"
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0
        assert session.get(Order, order.id).state == OrderState.PAYING
    assert len(mocked.calls) == 0


def test_stripe_webhook_a_little_ahead_of_our_clock_is_still_accepted(client, mocked):
    event = json.dumps(build_event("customer.created", {"id": "cus_1", "object": "customer"}))
    response = client.post(
        "/webhooks/stripe",
        data=event,
        content_type="application/json",
        headers={"Stripe-Signature": sign(event, "whsec_unit_1", int(time.time()) + 120)},
    )
    assert response.status_code == 200, response.text
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 1


# --- 6. outbound webhook and alert URLs at registration -------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/hook",
        "https://10.0.0.5/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:169.254.169.254]/",
        "https://localhost/hook",
        "https://intranet.example.com/hook",  # resolves to a private address (fake_dns)
    ],
)
def test_merchant_webhook_urls_to_internal_addresses_are_refused_at_registration(
    app, runner, fake_dns, url
):
    fake_dns["intranet.example.com"] = ["10.20.30.40"]
    with pytest.raises(ValueError, match="webhook URL refused"):
        make_key(webhook_url=url)
    result = runner.invoke(args=["portal", "create-api-key", "Probe", "--webhook-url", url])
    assert result.exit_code != 0
    assert "refused" in result.output
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(ApiKey)) == 0


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/alert",
        "https://192.168.1.10/alert",
        "https://169.254.169.254/latest",
        "https://[fd00:ec2::254]/",
        "http://alerts.example.com/hook",
        "https://ops:pw@alerts.example.com/hook",
    ],
)
def test_alert_webhook_url_to_an_internal_address_stops_the_app(make_app, url):
    with pytest.raises(ConfigError, match="PORTAL_ALERT_WEBHOOK_URL"):
        make_app(ALERT_WEBHOOK_URL=url)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1", 0),
        (b"{}", 1),
        (b"[[], {}, []]", 2),
        (b'{"a": [{"b": {}}]}', 4),
        (b'{"a": "[[[{{{", "b": "\\"[[[", "c": "\\\\"}', 1),  # brackets in strings, escapes
        (b'[{"x": "\\\\\\"]]]"}]', 2),
        (b"[" * 40 + b"]" * 40, 40),
        (b"[" * 100_000, 100_000),  # unclosed: still refused before Python's parser recurses
    ],
)
def test_json_depth_counts_only_brackets_outside_strings(raw, expected):
    assert jsonlimits.depth(raw) == expected
    if expected > jsonlimits.MAX_DEPTH:
        with pytest.raises(jsonlimits.TooDeep):
            jsonlimits.loads(raw)
    elif b"[" * 40 not in raw:
        assert jsonlimits.loads(raw) == json.loads(raw)
