"""Authorise now, capture on shipment: capture (all or less), cancel (void), refunds that add up
to at most what was captured, item changes before capture (decrease, increase within the limit,
increase that needs a new pay link), and the worker's expiry of links and holds. Stripe is
stood in by `responses`, and the exact calls are asserted."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import update

from portal.api import cancel as api_orders
from portal.db import db
from portal.models import Order, OrderState, utcnow
from tests.api_support import (
    ApiClient,
    authorise,
    deliveries,
    make_key,
    order_row,
    queued,
    run_queued,
    session_body,
)
from tests.conftest import STRIPE_BASE

PI = f"{STRIPE_BASE}/v1/payment_intents"


@pytest.fixture
def app(make_app):
    return make_app(SMTP_URL="smtp://127.0.0.1:2525")


@pytest.fixture
def api(app):
    return ApiClient(app.test_client(), make_key().secret)


def authorised_order(app, api, mocked, *, manual=True, **overrides) -> dict:
    body = session_body(capture_method="manual" if manual else "automatic", **overrides)
    order = api.post("/checkout-sessions", body).json["order"]
    authorise(app, mocked, order["id"], manual=manual, stripe_base=STRIPE_BASE)
    return api.get(f"/orders/{order['id']}").json


def form(call) -> dict:
    return dict(parse_qsl(call.request.body or ""))


def test_authorised_order_tells_the_merchant_order_authorized(app, api, mocked):
    order = authorised_order(app, api, mocked)
    assert order["status"] == "authorized"
    assert order["amount_authorized"] == order["amount_capturable"] == 221000
    assert order["amount_captured"] is None
    assert order["expires_at"] is not None  # the capture deadline
    assert order_row(order["id"]).state == OrderState.FULFILLED
    assert [d.event_type for d in deliveries()] == ["order.authorized"]
    assert not queued("mail")  # the receipt waits for the capture


def test_automatic_capture_tells_the_merchant_order_paid_and_sends_a_receipt(app, api, mocked):
    order = authorised_order(app, api, mocked, manual=False)
    assert order["status"] == "paid"
    assert order["amount_captured"] == 221000
    assert [d.event_type for d in deliveries()] == ["order.paid"]
    assert [j.payload["template"] for j in queued("mail")] == ["receipt"]


def test_capture_in_full(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/capture", json={"id": pi, "status": "succeeded", "amount_received": 221000}
    )
    response = api.post(f"/orders/{order['id']}/capture", {}, headers={"Idempotency-Key": "c1"})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "captured"
    assert response.json["amount_captured"] == 221000
    call = mocked.calls[-1]
    assert form(call) == {}  # all of it: no amount_to_capture
    assert call.request.headers["Idempotency-Key"] == f"{order['id']}-capture-221000"
    assert [d.event_type for d in deliveries()] == ["order.authorized", "order.captured"]
    # The retry gets the first answer and captures nothing more.
    again = api.post(f"/orders/{order['id']}/capture", {}, headers={"Idempotency-Key": "c1"})
    assert again.json == response.json
    assert len([c for c in mocked.calls if c.request.url.endswith("/capture")]) == 1


def test_capture_less_on_partial_shipment(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/capture", json={"id": pi, "status": "succeeded", "amount_received": 150000}
    )
    response = api.post(f"/orders/{order['id']}/capture", {"amount": 150000})
    assert response.json["amount_captured"] == 150000
    assert form(mocked.calls[-1]) == {"amount_to_capture": "150000"}
    assert order_row(order["id"]).amount_paid_minor == 150000


def test_capture_above_authorised_is_refused_without_calling_stripe(app, api, mocked):
    order = authorised_order(app, api, mocked)
    calls = len(mocked.calls)
    response = api.post(f"/orders/{order['id']}/capture", {"amount": 221001})
    assert response.status_code == 400
    assert response.json["error"]["code"] == "amount_too_large"
    assert response.json["error"]["param"] == "amount"
    assert len(mocked.calls) == calls


def test_capture_twice_is_refused(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/capture", json={"id": pi, "status": "succeeded", "amount_received": 221000}
    )
    api.post(f"/orders/{order['id']}/capture", {})
    response = api.post(f"/orders/{order['id']}/capture", {})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "order_already_captured"


def test_capture_of_an_automatic_order_is_refused(app, api, mocked):
    order = authorised_order(app, api, mocked, manual=False)
    response = api.post(f"/orders/{order['id']}/capture", {})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "order_not_capturable"


def test_capture_of_an_unpaid_order_is_refused(api):
    order = api.post("/checkout-sessions", session_body(capture_method="manual")).json["order"]
    response = api.post(f"/orders/{order['id']}/capture", {})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "order_not_authorized"


def test_cancel_voids_the_authorisation_and_capture_after_cancel_fails(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{pi}/cancel", json={"id": pi, "status": "canceled"})
    response = api.post(f"/orders/{order['id']}/cancel", {"reason": "out of stock"})
    assert response.status_code == 200, response.json
    assert response.json["status"] == "cancelled"
    assert form(mocked.calls[-1]) == {"cancellation_reason": "abandoned"}
    assert [d.event_type for d in deliveries()] == ["order.authorized", "order.cancelled"]
    capture = api.post(f"/orders/{order['id']}/capture", {})
    assert capture.status_code == 409
    assert capture.json["error"]["code"] == "order_cancelled"
    # Cancelling again is harmless.
    assert api.post(f"/orders/{order['id']}/cancel", {}).json["status"] == "cancelled"


def test_cancel_an_unpaid_order(api):
    order = api.post("/checkout-sessions", session_body()).json["order"]
    response = api.post(f"/orders/{order['id']}/cancel", {})
    assert response.json["status"] == "cancelled"
    assert response.json["url"] is None
    assert [d.event_type for d in deliveries()] == ["order.cancelled"]


def test_cancel_after_capture_says_refund_instead(app, api, mocked):
    order = authorised_order(app, api, mocked, manual=False)
    response = api.post(f"/orders/{order['id']}/cancel", {})
    assert response.status_code == 409
    assert "refund" in response.json["error"]["message"]


def refund_reply(amount: int, refund_id: str = "re_1") -> dict:
    return {"id": refund_id, "object": "refund", "amount": amount, "status": "succeeded"}


def test_partial_refunds_add_up_to_at_most_what_was_captured(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/capture", json={"id": pi, "status": "succeeded", "amount_received": 100000}
    )
    api.post(f"/orders/{order['id']}/capture", {"amount": 100000})
    mocked.post(f"{STRIPE_BASE}/v1/refunds", json=refund_reply(60000))
    first = api.post("/refunds", {"order": order["id"], "amount": 60000, "reason": "damaged"})
    assert first.status_code == 200, first.json
    assert first.json["order"]["status"] == "partially_refunded"
    assert first.json["order"]["amount_refunded"] == 60000
    assert form(mocked.calls[-1])["payment_intent"] == pi
    assert form(mocked.calls[-1])["amount"] == "60000"
    too_much = api.post("/refunds", {"order": order["id"], "amount": 40001})
    assert too_much.status_code == 400
    assert too_much.json["error"]["code"] == "amount_too_large"
    mocked.replace("POST", f"{STRIPE_BASE}/v1/refunds", json=refund_reply(40000, "re_2"))
    rest = api.post("/refunds", {"order": order["id"]})  # the default: all that is left
    assert rest.json["amount"] == 40000
    assert rest.json["order"]["status"] == "refunded"
    assert [d.event_type for d in deliveries("order.refunded")] == ["order.refunded"] * 2
    nothing_left = api.post("/refunds", {"order": order["id"], "amount": 1})
    assert nothing_left.status_code == 409


def test_refund_of_an_uncaptured_authorisation_is_refused(app, api, mocked):
    order = authorised_order(app, api, mocked)
    response = api.post("/refunds", {"order": order["id"], "amount": 100})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "order_not_refundable"


@pytest.mark.parametrize("amount", [0, -5, 1.5, 100_000_000])
def test_refund_amount_must_be_a_positive_integer(app, api, mocked, amount):
    order = authorised_order(app, api, mocked, manual=False)
    response = api.post("/refunds", {"order": order["id"], "amount": amount})
    assert response.status_code == 400
    assert response.json["error"]["param"] == "amount"


def test_refund_idempotency_key_becomes_stripes(app, api, mocked):
    order = authorised_order(app, api, mocked, manual=False)
    mocked.post(f"{STRIPE_BASE}/v1/refunds", json=refund_reply(1000))
    headers = {"Idempotency-Key": "rf-77"}
    first = api.post("/refunds", {"order": order["id"], "amount": 1000}, headers=headers)
    again = api.post("/refunds", {"order": order["id"], "amount": 1000}, headers=headers)
    assert again.json == first.json
    refund_calls = [c for c in mocked.calls if c.request.url.endswith("/v1/refunds")]
    assert len(refund_calls) == 1
    assert refund_calls[0].request.headers["Idempotency-Key"] == f"{order['id']}-refund-key-rf-77"


def test_decrease_before_capture_lowers_what_is_captured(app, api, mocked):
    order = authorised_order(app, api, mocked)
    response = api.patch(
        f"/orders/{order['id']}",
        {"items": [{"name": "Seat licence", "unit_amount": 4900, "quantity": 30}]},
    )
    assert response.status_code == 200
    assert response.json["approval_required"] is False
    assert response.json["order"]["amount_total"] == 147000
    assert response.json["order"]["amount_capturable"] == 147000
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/capture", json={"id": pi, "status": "succeeded", "amount_received": 147000}
    )
    api.post(f"/orders/{order['id']}/capture", {})
    assert form(mocked.calls[-1]) == {"amount_to_capture": "147000"}
    assert "order.updated" in [d.event_type for d in deliveries()]


def test_increase_beyond_the_hold_sends_a_new_pay_link(app, api, mocked):
    order = authorised_order(app, api, mocked)
    bigger = {"items": [{"name": "Seat licence", "unit_amount": 4900, "quantity": 50}]}
    response = api.patch(f"/orders/{order['id']}", bigger)
    assert response.status_code == 200
    answer = response.json
    assert answer["approval_required"] is True
    replacement = answer["replacement"]
    assert replacement["mode"] == "link"
    assert replacement["order"]["amount_total"] == 245000
    assert replacement["order"]["replaces"] == order["id"]
    assert answer["order"]["replaced_by"] == replacement["order"]["id"]
    assert answer["order"]["status"] == "authorized"  # still capturable until the new one is
    (mail,) = queued("mail")
    assert mail.payload["to"] == "buyer@example.com"
    # A second change goes to the replacement.
    again = api.patch(f"/orders/{order['id']}", bigger)
    assert again.status_code == 409
    assert again.json["error"]["code"] == "order_replaced"
    # The customer authorises the new amount: the old hold is voided.
    old_pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{old_pi}/cancel", json={"id": old_pi, "status": "canceled"})
    authorise(app, mocked, replacement["order"]["id"], manual=True, stripe_base=STRIPE_BASE)
    assert api.get(f"/orders/{order['id']}").json["status"] == "cancelled"
    assert api.get(f"/orders/{replacement['order']['id']}").json["status"] == "authorized"


def test_increase_within_the_limit_raises_the_authorisation(make_app, mocked):
    app = make_app(AUTH_INCREASE_LIMIT_PERCENT="10")
    api = ApiClient(app.test_client(), make_key().secret)
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{pi}/increment_authorization", json={"id": pi, "amount": 235700})
    items = session_body()["items"]
    items[0]["quantity"] = 43  # +14,700: within 10% of 221,000
    response = api.patch(f"/orders/{order['id']}", {"items": items})
    assert response.json["approval_required"] is False
    assert response.json["order"]["amount_authorized"] == 235700
    assert form(mocked.calls[-1]) == {"amount": "235700"}


def test_increase_within_the_limit_that_the_card_refuses_needs_a_new_link(make_app, mocked):
    app = make_app(AUTH_INCREASE_LIMIT_PERCENT="10", SMTP_URL="smtp://127.0.0.1:2525")
    api = ApiClient(app.test_client(), make_key().secret)
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/increment_authorization",
        status=400,
        json={"error": {"type": "invalid_request_error", "message": "not eligible"}},
    )
    items = session_body()["items"]
    items[0]["quantity"] = 41
    response = api.patch(f"/orders/{order['id']}", {"items": items})
    assert response.json["approval_required"] is True


def test_items_cannot_change_after_capture(app, api, mocked):
    order = authorised_order(app, api, mocked, manual=False)
    response = api.patch(f"/orders/{order['id']}", {"items": session_body()["items"]})
    assert response.status_code == 409
    assert response.json["error"]["code"] == "order_not_updatable"


def backdate(reference: str, **values) -> None:
    with db.transaction() as session:
        session.execute(update(Order).where(Order.reference == reference).values(**values))


def test_worker_cancels_authorisations_not_captured_in_time(app, api, mocked):
    order = authorised_order(app, api, mocked)
    fresh = authorised_order(app, api, mocked, reference="SO-2")
    backdate(order["id"], paid_at=utcnow() - timedelta(days=7, minutes=1))
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(f"{PI}/{pi}/cancel", json={"id": pi, "status": "canceled"})
    services = app.extensions["portal"]
    api_orders.run_expiry(services, None)
    run_queued(app, "cancel")
    expired = api.get(f"/orders/{order['id']}").json
    assert expired["status"] == "cancelled"
    assert order_row(order["id"]).failure_reason.startswith("not captured in time")
    assert api.get(f"/orders/{fresh['id']}").json["status"] == "authorized"
    assert "order.cancelled" in [d.event_type for d in deliveries()]


def test_worker_expires_unpaid_links(app, api):
    order = api.post("/checkout-sessions", session_body(mode="link")).json["order"]
    backdate(order["id"], created_at=utcnow() - timedelta(days=8))
    api_orders.run_expiry(app.extensions["portal"], None)
    assert api.get(f"/orders/{order['id']}").json["status"] == "expired"
    assert [d.event_type for d in deliveries()] == ["order.expired"]


def test_an_authorisation_stripe_already_released_is_still_cancelled(app, api, mocked):
    order = authorised_order(app, api, mocked)
    pi = order_row(order["id"]).stripe_payment_intent_id
    mocked.post(
        f"{PI}/{pi}/cancel",
        status=400,
        json={"error": {"type": "invalid_request_error", "message": "already canceled"}},
    )
    mocked.replace("GET", f"{PI}/{pi}", json={"id": pi, "status": "canceled"})
    response = api.post(f"/orders/{order['id']}/cancel", {})
    assert response.json["status"] == "cancelled"
