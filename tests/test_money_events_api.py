"""Issue 26 on the merchant API, with Stripe stood in by `responses` and a sample receiver that
checks each signature: a delayed payment that fails sends `order.payment_failed`, an unpaid link
that runs out sends `order.expired`, and `GET /orders/{id}` lists the order's payments and every
refund whoever made it (the API, Stripe's dashboard)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from portal import orders
from portal.api import cancel as api_orders
from portal.db import db
from portal.models import Order, OrderState, utcnow
from portal.sandbox.stripe_api import build_event, sign
from tests.api_support import (
    ApiClient,
    SampleReceiver,
    authorise,
    make_key,
    order_row,
    run_queued,
    session_body,
)
from tests.conftest import STRIPE_BASE


@pytest.fixture
def app(make_app):
    return make_app(SMTP_URL="smtp://127.0.0.1:2525")  # pay links need outgoing mail


@pytest.fixture
def key(app):
    return make_key()


@pytest.fixture
def api(app, key):
    return ApiClient(app.test_client(), key.secret)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def receiver(mocked, key):
    return SampleReceiver(mocked, key.endpoint.secret)


def deliver(client, event: dict):
    payload = json.dumps(event)
    return client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": sign(payload, "whsec_unit_1")},
    )


def test_a_delayed_payment_that_fails_sends_order_payment_failed(
    app, client, api, mocked, receiver
):
    order = api.post("/checkout-sessions", session_body()).json["order"]
    row = order_row(order["id"])
    with db.transaction() as session:
        assert orders.move(
            row, "complete_unpaid", session=session, stripe_session_id="cs_test_bank"
        )
    stripe_session = {
        "id": "cs_test_bank",
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "unpaid",
        "amount_total": row.amount_minor,
        "currency": "usd",
        "client_reference_id": order["id"],
        "metadata": {"order_reference": order["id"]},
        "payment_intent": "pi_bank",
    }
    mocked.get(f"{STRIPE_BASE}/v1/checkout/sessions/cs_test_bank", json=stripe_session)
    response = deliver(client, build_event("checkout.session.async_payment_failed", stripe_session))
    assert response.status_code == 200
    assert order_row(order["id"]).state == OrderState.PAYMENT_FAILED
    run_queued(app, "payment_failed")
    run_queued(app, "webhook_delivery")
    assert receiver.types() == ["order.payment_failed"]
    event = receiver.events[0]
    assert event["data"]["object"]["status"] == "payment_failed"
    assert event["data"]["failure"] == {"message": "The payment did not go through."}
    # Delivered again (Stripe retries): still one event.
    deliver(client, build_event("checkout.session.async_payment_failed", stripe_session))
    run_queued(app, "payment_failed")
    run_queued(app, "webhook_delivery")
    assert receiver.types() == ["order.payment_failed"]


def test_an_unpaid_link_that_runs_out_sends_order_expired(app, api, mocked, receiver):
    order = api.post("/checkout-sessions", session_body(mode="link")).json["order"]
    with db.transaction() as session:
        session.execute(
            update(Order)
            .where(Order.reference == order["id"])
            .values(created_at=utcnow() - timedelta(days=8))
        )
    api_orders.run_expiry(app.extensions["portal"], None)
    run_queued(app, "cancel")
    run_queued(app, "webhook_delivery")
    assert "order.expired" in receiver.types()
    expired = [e for e in receiver.events if e["type"] == "order.expired"]
    assert expired[0]["data"]["object"]["status"] == "expired"


def test_get_order_lists_payments_and_every_refund(app, client, api, mocked, receiver):
    order = api.post("/checkout-sessions", session_body()).json["order"]
    authorise(app, mocked, order["id"], manual=False, stripe_base=STRIPE_BASE)
    before = api.get(f"/orders/{order['id']}").json
    (payment,) = before["payments"]
    intent = f"pi_{order['id'][-8:]}"
    assert payment["id"] == intent
    assert (payment["amount"], payment["currency"], payment["status"]) == (
        before["amount_total"],
        "usd",
        "succeeded",
    )
    assert payment["created"].endswith("Z")
    assert before["refunds"] == []

    mocked.post(
        f"{STRIPE_BASE}/v1/refunds",
        json={"id": "re_api", "object": "refund", "amount": 1000, "status": "succeeded"},
    )
    assert api.post("/refunds", {"order": order["id"], "amount": 1000}).status_code == 200
    # A refund made in Stripe's dashboard, and the API refund's own webhook.
    listed = [
        {"id": "re_dash", "amount": 2000, "status": "succeeded", "created": 1_800_000_100},
        {"id": "re_api", "amount": 1000, "status": "succeeded", "created": 1_800_000_000},
    ]
    mocked.get(
        f"{STRIPE_BASE}/v1/refunds", json={"object": "list", "data": listed, "has_more": False}
    )
    charge = {
        "id": "ch_1",
        "object": "charge",
        "amount": before["amount_total"],
        "amount_refunded": 3000,
        "payment_intent": intent,
    }
    assert deliver(client, build_event("charge.refunded", charge)).status_code == 200
    after = api.get(f"/orders/{order['id']}").json
    assert after["amount_refunded"] == 3000
    assert after["status"] == "partially_refunded"
    assert [(r["id"], r["amount"], r["status"]) for r in after["refunds"]] == [
        ("re_api", 1000, "succeeded"),
        ("re_dash", 2000, "succeeded"),
    ]
    run_queued(app, "platform_refund")
    run_queued(app, "webhook_delivery")
    refunded = [e for e in receiver.events if e["type"] == "order.refunded"]
    assert sorted(e["data"]["refund"]["id"] for e in refunded) == ["re_api", "re_dash"]
    assert {e["data"]["refund"]["source"] for e in refunded} == {"api", "stripe"}


def test_the_same_refund_recorded_at_once_by_two_paths_counts_once(app, api, mocked):
    """The console (or API) and Stripe's charge.refunded recording one refund at the same
    moment: one row, one amount, one platform job (PostgreSQL runs this on real row locks)."""
    import threading

    from sqlalchemy import select

    from portal import refunds
    from portal.models import Job

    order = api.post("/checkout-sessions", session_body()).json["order"]
    row = authorise(app, mocked, order["id"], manual=False, stripe_base=STRIPE_BASE)
    barrier = threading.Barrier(4)
    results, errors = [], []
    stripe_refund = {"id": "re_race", "amount": 1500, "status": "succeeded"}
    other = {"id": "re_other", "amount": 500, "status": "succeeded"}

    def record(refund, source):
        try:
            barrier.wait(5)
            results.append(refunds.record(row.id, refund, source=source))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=record, args=(stripe_refund, "api")),
        threading.Thread(target=record, args=(stripe_refund, "stripe")),
        threading.Thread(target=record, args=(stripe_refund, "stripe")),
        threading.Thread(target=record, args=(other, "stripe")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert sorted((r.refund_id, r.new) for r in results) == [
        ("re_other", True),
        ("re_race", False),
        ("re_race", False),
        ("re_race", True),
    ]
    assert order_row(order["id"]).amount_refunded_minor == 2000
    with db.reader() as session:
        keys = session.scalars(
            select(Job.dedupe_key).where(Job.kind == "platform_refund").order_by(Job.dedupe_key)
        ).all()
    assert keys == ["platform_refund:re_other", "platform_refund:re_race"]


def test_back_on_stripe_without_a_cancel_url_shows_the_review_page_again(app, api, mocked):
    body = session_body(mode="link")  # a pay link may come without a cancel_url
    del body["cancel_url"]
    created = api.post("/checkout-sessions", body)
    assert created.status_code == 200, created.json
    order = created.json["order"]
    page = app.test_client().get(f"/orders/{order['id']}/cancelled")
    assert page.status_code == 200
    assert order_row(order["id"]).state == OrderState.OPEN


def test_a_dashboard_refund_reaches_a_failing_merchant_endpoint_once(
    app, client, api, mocked, receiver
):
    order = api.post("/checkout-sessions", session_body()).json["order"]
    authorise(app, mocked, order["id"], manual=False, stripe_base=STRIPE_BASE)
    run_queued(app, "webhook_delivery")
    intent = f"pi_{order['id'][-8:]}"
    full = order_row(order["id"]).amount_paid_minor
    mocked.get(
        f"{STRIPE_BASE}/v1/refunds",
        json={
            "object": "list",
            "data": [{"id": "re_dash", "amount": full, "status": "succeeded", "created": 1}],
            "has_more": False,
        },
    )
    charge = {"id": "ch_1", "object": "charge", "amount": full, "payment_intent": intent}
    deliver(client, build_event("charge.refunded", {**charge, "amount_refunded": full}))
    deliver(client, build_event("charge.refunded", {**charge, "amount_refunded": full}))
    assert order_row(order["id"]).state == OrderState.REFUNDED
    receiver.fail_next = 2  # the merchant's endpoint is down for two attempts
    for _ in range(4):
        run_queued(app, "platform_refund")
        run_queued(app, "webhook_delivery")
    assert receiver.types() == ["order.paid", "order.refunded"]
    assert receiver.events[-1]["data"]["refund"] == {
        "id": "re_dash",
        "amount": full,
        "reason": None,
        "source": "stripe",
        "status": "succeeded",
    }
    assert receiver.events[-1]["data"]["object"]["status"] == "refunded"


def _lost_then_recorded(app, client, api, mocked, *, amount: int | None):
    """A merchant API refund whose answer from Stripe is lost (Stripe made it: every try of the
    SDK answers 500), then Stripe's charge.refunded records it, then the merchant retries with
    the same Idempotency-Key. Returns the order's reference, its total, the two answers and what
    Stripe was asked."""
    import responses

    order = api.post("/checkout-sessions", session_body()).json["order"]
    authorise(app, mocked, order["id"], manual=False, stripe_base=STRIPE_BASE)
    full = order_row(order["id"]).amount_paid_minor
    refunded = full if amount is None else amount
    intent = f"pi_{order['id'][-8:]}"
    asked: list[dict] = []

    def stripe_refunds(request):
        from urllib.parse import parse_qs

        asked.append({k: v[0] for k, v in parse_qs(request.body).items()})
        if len(asked) <= 3:  # the first request and the SDK's two retries: the answers are lost
            return (500, {}, json.dumps({"error": {"type": "api_error", "message": "lost"}}))
        return (200, {}, json.dumps(made))  # Stripe replays the refund the key made

    mocked.add_callback(responses.POST, f"{STRIPE_BASE}/v1/refunds", callback=stripe_refunds)
    body = {"order": order["id"]} if amount is None else {"order": order["id"], "amount": amount}
    headers = {"Idempotency-Key": "refund-once"}
    first = api.post("/refunds", body, headers=headers)
    assert first.status_code >= 500  # the merchant saw an outage
    key = asked[0]["metadata[portal_request]"]
    made = {
        "id": "re_lost",
        "object": "refund",
        "amount": refunded,
        "status": "succeeded",
        "payment_intent": intent,
        "created": 1_800_000_000,
        "metadata": {"order_reference": order["id"], "portal_request": key},
    }
    mocked.get(
        f"{STRIPE_BASE}/v1/refunds", json={"object": "list", "data": [made], "has_more": False}
    )
    charge = {"id": "ch_1", "object": "charge", "amount": full, "payment_intent": intent}
    event = build_event("charge.refunded", {**charge, "amount_refunded": refunded})
    assert deliver(client, event).status_code == 200
    assert order_row(order["id"]).amount_refunded_minor == refunded
    second = api.post("/refunds", body, headers=headers)
    return order["id"], full, first, second, asked


@pytest.mark.parametrize("partial", [False, True], ids=["full", "partial"])
def test_a_refund_retried_after_a_lost_answer_is_counted_once(
    app, client, api, mocked, receiver, partial
):
    """The interleaving tests/test_faults.py found under load, step by step: the API refund's
    answer is lost, charge.refunded records the refund, the merchant retries with the same key.
    The retry answers the same refund (not a refusal, not a second one) and the books count it
    once; the merchant is told of it once."""
    reference, full, _first, second, asked = _lost_then_recorded(
        app, client, api, mocked, amount=1000 if partial else None
    )
    refunded = 1000 if partial else full
    assert second.status_code == 200, second.json
    assert second.json["id"] == "re_lost"
    assert second.json["amount"] == refunded
    row = order_row(reference)
    assert row.amount_refunded_minor == refunded
    assert row.state == (OrderState.PARTIALLY_REFUNDED if partial else OrderState.REFUNDED)
    # Every try at Stripe carried the same idempotency key and the same amount.
    assert {a["amount"] for a in asked} == {str(refunded)}
    assert api.get(f"/orders/{reference}").json["refunds"] == [
        {
            "id": "re_lost",
            "amount": refunded,
            "currency": "usd",
            "status": "succeeded",
            "created": "2027-01-15T08:00:00Z",
        }
    ]
    run_queued(app, "platform_refund")
    run_queued(app, "webhook_delivery")
    assert [
        e["data"]["refund"]["id"] for e in receiver.events if e["type"] == "order.refunded"
    ] == ["re_lost"]


def test_a_retry_with_another_key_after_everything_was_refunded_is_refused(
    app, client, api, mocked
):
    """The cousin: the refund is found only by the key that made it. Another request (another
    key, or none) for money already refunded is refused, and nothing is counted."""
    reference, full, *_ = _lost_then_recorded(app, client, api, mocked, amount=None)
    for headers in ({"Idempotency-Key": "another"}, {}):
        again = api.post("/refunds", {"order": reference}, headers=headers)
        assert again.status_code in (400, 409), again.json
    assert order_row(reference).amount_refunded_minor == full
