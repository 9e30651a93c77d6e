"""`POST /webhooks/stripe`: signatures, each event once, every event type the portal handles, and
the webhook racing the learner's own return. Stripe's re-fetch is stood in by `responses`."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time

import pytest
import requests
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import sessionmaker

from portal import checkout, orders
from portal.checkout import OrderDraft
from portal.db import db
from portal.jobs import Worker
from portal.models import Job, Order, OrderEvent, OrderState, StripeEvent
from portal.sandbox.stripe_api import build_event, sign
from tests.conftest import SKILLJAR_BASE, STRIPE_BASE

SESSIONS_URL = f"{STRIPE_BASE}/v1/checkout/sessions"
SESSION_URL = f"{SESSIONS_URL}/cs_test_1"
PURCHASE_URL = f"{SKILLJAR_BASE}/v1/purchases/p1abc"
FULFIL_URL = f"{PURCHASE_URL}/fulfill"
THANKS = "https://academy.test/thanks"


# --- helpers --------------------------------------------------------------------------------------


def paying_order(platform_ref: str = "p1abc", session_id: str = "cs_test_1") -> Order:
    """An order whose learner is on Stripe's payment page for `session_id`."""
    order = checkout.open_order(
        OrderDraft(
            platform="skilljar",
            platform_ref=platform_ref,
            description="Introduction to Python",
            currency="USD",
            amount_minor=7840,
            quantity=2,
            customer_email="learner@example.com",
        )
    )
    with db.transaction() as session:
        assert orders.move(
            order,
            "pay",
            session=session,
            stripe_session_id=session_id,
            stripe_session_url=f"https://checkout.stripe.test/c/pay/{session_id}",
            session_attempt=1,
        )
    return orders.refresh(order)


def order_row(order: Order) -> Order:
    return orders.refresh(order)


def count(model, *where) -> int:
    with db.reader() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where))


def fulfil_jobs() -> list[Job]:
    with db.reader() as session:
        return list(session.scalars(select(Job).where(Job.kind == "fulfil")))


def session_for(checkout_session, order: Order, **fields) -> dict:
    return checkout_session(client_reference_id=order.reference, **fields)


def paid(checkout_session, order: Order, **fields) -> dict:
    values = {
        "status": "complete",
        "payment_status": "paid",
        "payment_intent": "pi_test_1",
        "url": None,
        **fields,
    }
    return session_for(checkout_session, order, **values)


def deliver(client, event: dict, *, signer="whsec_unit_1", timestamp=None, payload=None):
    """POST an event the way Stripe does: raw JSON body, `Stripe-Signature: t=...,v1=...`."""
    signed = json.dumps(event)
    body = signed if payload is None else payload
    return client.post(
        "/webhooks/stripe",
        data=body,
        content_type="application/json",
        headers={"Stripe-Signature": sign(signed, signer, timestamp)},
    )


def stripe_calls(mocked) -> list:
    return [c for c in mocked.calls if c.request.url.startswith(STRIPE_BASE)]


def skilljar_calls(mocked) -> list:
    return [c for c in mocked.calls if c.request.url.startswith(SKILLJAR_BASE)]


def run_worker(app, mocked) -> dict:
    """`flask portal worker --once`, in-process. Its periodic reconciliation lists no sessions."""
    mocked.get(SESSIONS_URL, json={"object": "list", "data": [], "has_more": False})
    worker = Worker(app.extensions["portal"], poll_seconds=0)
    return worker.run(once=True)


@pytest.fixture
def no_sdk_sleep(monkeypatch):
    """The Stripe SDK retries network errors after a short sleep; skip the sleep."""
    import stripe._http_client

    monkeypatch.setattr(stripe._http_client.HTTPClient, "_sleep_time_seconds", lambda *_: 0)


# --- signatures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "problem", ["unsigned", "wrong secret", "stale timestamp", "tampered body", "garbled header"]
)
def test_bad_or_stale_signature_is_400_logged_and_changes_nothing(
    client, mocked, checkout_session, caplog, problem
):
    order = paying_order()
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    payload = json.dumps(event)
    headers = {"Stripe-Signature": sign(payload, "whsec_unit_1")}
    if problem == "unsigned":
        headers = {}
    elif problem == "wrong secret":
        headers = {"Stripe-Signature": sign(payload, "whsec_someone_else")}
    elif problem == "stale timestamp":
        headers = {"Stripe-Signature": sign(payload, "whsec_unit_1", int(time.time()) - 301)}
    elif problem == "tampered body":
        payload = payload.replace('"amount_total": 7840', '"amount_total": 1')
    elif problem == "garbled header":
        headers = {"Stripe-Signature": "t=yesterday,v1=deadbeef"}
    with caplog.at_level(logging.WARNING, logger="portal.webhooks"):
        response = client.post(
            "/webhooks/stripe", data=payload, content_type="application/json", headers=headers
        )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_signature"
    assert "bad or stale signature" in caplog.text
    assert order_row(order).state == OrderState.PAYING
    assert count(StripeEvent) == 0
    assert count(Job) == 0
    assert len(mocked.calls) == 0  # not even Stripe was asked


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "[1, 2]",
        '{"type": "checkout.session.completed", "data": {"object": {}}}',
        '{"id": "evt_1", "type": "checkout.session.completed"}',
        '{"id": "evt_1", "type": "checkout.session.completed", "data": {"object": "cs_1"}}',
        b'{"id": "evt_\xff"}',
    ],
)
def test_a_signed_body_that_is_not_an_event_is_400_and_changes_nothing(client, mocked, body):
    """Signed with our secret (so not an outsider's), yet not a Stripe event: refused as bad,
    nothing stored and nobody called, never a 500."""
    payload = body if isinstance(body, bytes) else body.encode()
    timestamp = int(time.time())  # signed over the raw bytes, as Stripe signs
    digest = hmac.new(b"whsec_unit_1", f"{timestamp}.".encode() + payload, hashlib.sha256)
    signature = f"t={timestamp},v1={digest.hexdigest()}"
    response = client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": signature},
    )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_signature"
    assert count(StripeEvent) == 0
    assert len(mocked.calls) == 0


def test_a_verified_event_is_read_as_the_json_stripe_signed():
    """verify gives the id, the type and data.object as plain JSON (nested objects as dicts)."""
    from portal.webhooks import Event, verify

    obj = {"id": "cs_1", "object": "checkout.session", "metadata": {"order_reference": "ord_1"}}
    payload = json.dumps(
        {"id": "evt_9", "type": "checkout.session.completed", "data": {"object": obj}}
    )
    header = sign(payload, "whsec_unit_2")
    assert verify(payload.encode(), header, ("whsec_unit_1", "whsec_unit_2")) == Event(
        "evt_9", "checkout.session.completed", obj
    )
    assert verify(payload.encode(), header, ("whsec_unit_1",)) is None
    assert verify(payload.encode(), None, ("whsec_unit_2",)) is None


def test_signature_within_the_300_second_tolerance_is_accepted(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    response = deliver(client, event, timestamp=int(time.time()) - 240)
    assert response.status_code == 200
    assert order_row(order).state == OrderState.PAID


def test_rotated_second_secret_is_accepted(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    response = deliver(client, event, signer="whsec_unit_2")
    assert response.status_code == 200
    assert order_row(order).state == OrderState.PAID


def test_signed_body_that_is_not_json_is_400(client, mocked):
    payload = "not json at all"
    response = client.post(
        "/webhooks/stripe",
        data=payload,
        content_type="application/json",
        headers={"Stripe-Signature": sign(payload, "whsec_unit_1")},
    )
    assert response.status_code == 400
    assert count(StripeEvent) == 0


# --- each event once ------------------------------------------------------------------------------


def test_replayed_event_id_is_a_no_op(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    first = deliver(client, event)
    events_after_first = count(OrderEvent, OrderEvent.order_id == order.id)
    second = deliver(client, event)
    assert first.status_code == second.status_code == 200
    assert "duplicate" not in first.json
    assert second.json["duplicate"] is True
    assert len(stripe_calls(mocked)) == 1  # the replay did not even re-fetch
    assert count(StripeEvent) == 1
    assert count(OrderEvent, OrderEvent.order_id == order.id) == events_after_first
    assert len(fulfil_jobs()) == 1


def test_session_that_is_not_ours_is_acknowledged_and_ignored(client, mocked, checkout_session):
    order = paying_order()
    foreign = checkout_session(
        id="cs_test_other_integration",
        client_reference_id="invoice-42",
        status="complete",
        payment_status="paid",
    )
    response = deliver(client, build_event("checkout.session.completed", foreign))
    assert response.status_code == 200
    assert response.json["outcome"] == "ignored: not our session"
    assert len(mocked.calls) == 0
    assert order_row(order).state == OrderState.PAYING
    assert count(Job) == 0


def test_charge_that_is_not_ours_is_acknowledged_and_ignored(client, mocked):
    charge = {"id": "ch_x", "object": "charge", "payment_intent": "pi_unknown", "amount": 100}
    charge["amount_refunded"] = 100
    response = deliver(client, build_event("charge.refunded", charge))
    assert response.status_code == 200
    assert response.json["outcome"] == "ignored: not our charge"


def test_event_type_not_handled_is_acknowledged(client, mocked):
    response = deliver(client, build_event("customer.created", {"id": "cus_1"}))
    assert response.status_code == 200
    assert response.json["outcome"] == "ignored: event type not handled"


# --- checkout.session.* ---------------------------------------------------------------------------


def test_completed_and_paid_records_the_payment_and_queues_exactly_one_fulfil_job(
    client, mocked, checkout_session
):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    # The event body is only a hint: the amounts recorded come from the re-fetched session.
    hint = session_for(checkout_session, order, status="complete", amount_total=1)
    response = deliver(client, build_event("checkout.session.completed", hint))
    assert response.status_code == 200
    assert response.json["outcome"] == "order paid"
    fetch = stripe_calls(mocked)[0].request
    assert (fetch.method, fetch.url) == ("GET", SESSION_URL)
    assert fetch.headers["Authorization"] == "Bearer sk_test_unit"
    row = order_row(order)
    assert row.state == OrderState.PAID
    assert row.amount_paid_minor == 7840
    assert row.stripe_payment_intent_id == "pi_test_1"
    assert row.paid_at is not None
    jobs = fulfil_jobs()
    assert [(j.kind, j.state, j.order_id) for j in jobs] == [("fulfil", "queued", order.id)]
    assert skilljar_calls(mocked) == []  # the platform call runs as a job, not in the webhook
    # Another delivery of the same news under a new event id changes nothing more.
    again = deliver(client, build_event("checkout.session.completed", hint))
    assert again.status_code == 200
    assert len(fulfil_jobs()) == 1
    assert count(StripeEvent) == 2


def test_completed_but_unpaid_shows_processing_until_async_success_pays(
    client, mocked, checkout_session
):
    order = paying_order()
    unpaid = session_for(checkout_session, order, status="complete", payment_status="unpaid")
    mocked.get(SESSION_URL, json=unpaid)
    deliver(client, build_event("checkout.session.completed", unpaid))
    assert order_row(order).state == OrderState.PROCESSING
    assert fulfil_jobs() == []
    page = client.get(f"/orders/{order.reference}/status")
    assert "processing" in page.text
    assert page.headers["Refresh"].startswith("3; url=")

    mocked.replace("GET", SESSION_URL, json=paid(checkout_session, order))
    response = deliver(
        client,
        build_event("checkout.session.async_payment_succeeded", paid(checkout_session, order)),
    )
    assert response.status_code == 200
    assert order_row(order).state == OrderState.PAID
    assert len(fulfil_jobs()) == 1


def test_async_payment_failure_marks_the_order_and_tells_the_platform(
    app, client, mocked, checkout_session
):
    order = paying_order()
    unpaid = session_for(checkout_session, order, status="complete", payment_status="unpaid")
    mocked.get(SESSION_URL, json=unpaid)
    deliver(client, build_event("checkout.session.completed", unpaid))
    response = deliver(client, build_event("checkout.session.async_payment_failed", unpaid))
    assert response.status_code == 200
    row = order_row(order)
    assert row.state == OrderState.PAYMENT_FAILED
    assert row.failure_reason == "The payment did not go through."
    assert fulfil_jobs() == []
    mocked.post(FULFIL_URL, json={"redirect_url": THANKS, "purchase": {"state": "FAILED"}})
    run_worker(app, mocked)
    (call,) = skilljar_calls(mocked)
    assert json.loads(call.request.body) == {
        "state": "FAILED",
        "error_msg": "The payment did not go through.",
    }
    page = client.get(f"/orders/{order.reference}/status")
    assert "did not go through" in page.text


def test_expired_session_expires_the_order(client, mocked, checkout_session):
    order = paying_order()
    expired = session_for(checkout_session, order, status="expired", url=None)
    mocked.get(SESSION_URL, json=expired)
    response = deliver(client, build_event("checkout.session.expired", expired))
    assert response.status_code == 200
    assert order_row(order).state == OrderState.EXPIRED
    assert count(Job) == 0


@pytest.mark.parametrize("stripe_says", ["complete", "expired"])
def test_expired_event_after_completed_does_not_undo_the_payment(
    client, mocked, checkout_session, stripe_says
):
    """Events arrive out of order. Stripe itself answers "complete" for a paid session; even a
    (wrong) "expired" answer cannot move a paid order back."""
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    assert order_row(order).state == OrderState.PAID
    if stripe_says == "expired":
        mocked.replace(
            "GET", SESSION_URL, json=session_for(checkout_session, order, status="expired")
        )
    late = build_event(
        "checkout.session.expired", session_for(checkout_session, order, status="expired")
    )
    response = deliver(client, late)
    assert response.status_code == 200
    row = order_row(order)
    assert row.state == OrderState.PAID
    assert row.amount_paid_minor == 7840
    assert len(fulfil_jobs()) == 1


# --- charges ------------------------------------------------------------------------------------


def charge(amount_refunded: int) -> dict:
    return {
        "id": "ch_test_1",
        "object": "charge",
        "amount": 7840,
        "amount_refunded": amount_refunded,
        "currency": "usd",
        "payment_intent": "pi_test_1",
    }


REFUNDS_URL = f"{STRIPE_BASE}/v1/refunds"


def stripe_refund(refund_id: str, amount: int, created: int = 1_700_000_000, **fields) -> dict:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "charge": "ch_test_1",
        "currency": "usd",
        "payment_intent": "pi_test_1",
        "metadata": {},
        "status": "succeeded",
        "created": created,
        **fields,
    }


def refunds_listed(mocked, *refunds: dict) -> None:
    """What Stripe answers to `GET /v1/refunds?payment_intent=pi_test_1` (newest first)."""
    body = {"object": "list", "data": list(reversed(refunds)), "has_more": False}
    mocked.upsert("GET", REFUNDS_URL, json=body)


@pytest.mark.parametrize(
    ("refunded", "state"),
    [(7840, OrderState.REFUNDED), (2000, OrderState.PAID)],
)
def test_charge_refunded_is_recorded_full_or_partial(
    app, client, mocked, checkout_session, refunded, state
):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    refunds_listed(mocked, stripe_refund("re_1", refunded))
    response = deliver(client, build_event("charge.refunded", charge(refunded)))
    assert response.status_code == 200
    row = order_row(order)
    # Refunded in full before the platform was told: the order is refunded. In part: the learner
    # paid and keeps the course, so the order still goes on to be fulfilled.
    assert row.state == state
    assert row.amount_refunded_minor == refunded
    with db.reader() as session:
        messages = session.scalars(
            select(OrderEvent.message).where(OrderEvent.order_id == order.id)
        ).all()
    assert "charge.refunded" in messages
    if state == OrderState.REFUNDED:
        # The queued fulfilment does not enrol the learner; Skilljar hears of the refund.
        mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
        run_worker(app, mocked)
        calls = skilljar_calls(mocked)
        assert [c.request.method for c in calls] == ["PUT"]
        assert json.loads(calls[0].request.body) == {
            "refund_cents": 7840,
            "refunded_at": "2023-11-14T22:13:20Z",
            "state": "REFUNDED",
        }
        page = client.get(f"/orders/{order.reference}/status")
        assert "refunded" in page.text
    else:
        # Fulfilled as usual, then Skilljar hears of the partial refund (refund_cents only).
        mocked.get(PURCHASE_URL, json={"id": "p1abc", "state": "CREATED"})
        mocked.post(
            FULFIL_URL,
            json={"redirect_url": THANKS, "purchase": {"id": "p1abc", "state": "SUCCESS"}},
        )
        mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "SUCCESS", "refund_cents": 2000})
        run_worker(app, mocked)
        run_worker(app, mocked)
        row = order_row(order)
        assert (row.state, row.amount_refunded_minor) == (OrderState.PARTIALLY_REFUNDED, 2000)
        calls = [c for c in skilljar_calls(mocked) if c.request.method != "GET"]
        assert [c.request.method for c in calls] == ["POST", "PUT"]
        assert json.loads(calls[1].request.body) == {"refund_cents": 2000}


def test_a_second_partial_refund_updates_the_amount(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    first = stripe_refund("re_1", 1000, 1_700_000_000)
    refunds_listed(mocked, first)
    deliver(client, build_event("charge.refunded", charge(1000)))
    refunds_listed(mocked, first, stripe_refund("re_2", 6840, 1_700_000_100))
    deliver(client, build_event("charge.refunded", charge(7840)))
    row = order_row(order)
    assert row.state == OrderState.REFUNDED
    assert row.amount_refunded_minor == 7840


def test_an_older_refund_event_arriving_late_changes_nothing(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    refunds_listed(mocked, stripe_refund("re_1", 1000), stripe_refund("re_2", 2000, 1_700_000_100))
    deliver(client, build_event("charge.refunded", charge(3000)))
    late = deliver(client, build_event("charge.refunded", charge(1000)))
    assert late.status_code == 200
    assert "no change" in late.get_json()["outcome"]
    row = order_row(order)
    assert row.amount_refunded_minor == 3000
    with db.reader() as session:
        jobs = session.scalars(select(Job.dedupe_key).where(Job.kind == "platform_refund")).all()
    assert sorted(jobs) == ["platform_refund:re_1", "platform_refund:re_2"]


def test_failed_refunds_are_not_counted(client, mocked, checkout_session):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    refunds_listed(mocked, stripe_refund("re_1", 7840, status="failed"))
    response = deliver(client, build_event("charge.refunded", charge(7840)))
    assert "no change" in response.get_json()["outcome"]
    assert order_row(order).amount_refunded_minor == 0


def test_refunding_all_that_was_captured_is_a_full_refund(client, mocked, checkout_session):
    # Authorised 78.40, captured 50.00 on shipment: refunding the 50.00 refunds everything.
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    refunds_listed(mocked, stripe_refund("re_1", 5000))
    deliver(client, build_event("charge.refunded", {**charge(5000), "amount_captured": 5000}))
    row = order_row(order)
    assert row.state == OrderState.REFUNDED
    assert row.amount_refunded_minor == 5000


def test_dispute_is_recorded_and_alerts_operators(client, mocked, checkout_session, caplog):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    deliver(client, build_event("checkout.session.completed", paid(checkout_session, order)))
    dispute = {
        "id": "dp_test_1",
        "object": "dispute",
        "amount": 7840,
        "charge": "ch_test_1",
        "payment_intent": "pi_test_1",
        "reason": "fraudulent",
        "status": "needs_response",
    }
    with caplog.at_level(logging.ERROR, logger="portal.webhooks"):
        response = deliver(client, build_event("charge.dispute.created", dispute))
    assert response.status_code == 200
    assert response.json["outcome"] == "dispute recorded"
    row = order_row(order)
    assert row.disputed is True
    assert row.state == OrderState.PAID  # the money question is the operator's now
    with db.reader() as session:
        alert = session.scalar(
            select(OrderEvent).where(OrderEvent.order_id == order.id, OrderEvent.kind == "alert")
        )
    assert alert.message.startswith("dispute opened for $78.40 (fraudulent)")
    assert alert.detail["reason"] == "fraudulent"
    assert alert.detail["alert"] == "dispute_opened"
    assert any(r.levelno == logging.ERROR and order.reference in r.message for r in caplog.records)


# --- when something is down -----------------------------------------------------------------------


def test_database_down_is_503_so_stripe_retries(client, mocked, checkout_session, monkeypatch):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    # Nothing listens on port 1: every connection attempt fails at once.
    dead = create_engine("postgresql+psycopg://portal@127.0.0.1:1/portal")
    with monkeypatch.context() as patch:
        patch.setattr(db, "sessions", sessionmaker(dead, expire_on_commit=False))
        response = deliver(client, event)
    dead.dispose()
    assert response.status_code == 503
    assert response.json["error"]["code"] == "unavailable"
    assert order_row(order).state == OrderState.PAYING
    # Stripe delivers again once the database is back, and that delivery is processed.
    retry = deliver(client, event)
    assert retry.status_code == 200
    assert "duplicate" not in retry.json
    assert order_row(order).state == OrderState.PAID


def test_database_locked_is_503(client, mocked, checkout_session, monkeypatch):
    from sqlalchemy.exc import OperationalError

    from portal.checkout import sessions as core

    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))

    def locked(*_args, **_kwargs):
        raise OperationalError("UPDATE orders ...", {}, Exception("database is locked"))

    monkeypatch.setattr(core, "record_payment", locked)
    response = deliver(
        client, build_event("checkout.session.completed", paid(checkout_session, order))
    )
    assert response.status_code == 503
    assert count(StripeEvent) == 0
    assert order_row(order).state == OrderState.PAYING


def test_stripe_unreachable_when_refetching_is_503_and_the_retry_succeeds(
    client, mocked, checkout_session, no_sdk_sleep
):
    order = paying_order()
    mocked.get(SESSION_URL, body=requests.ConnectionError("connection refused"))
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    response = deliver(client, event)
    assert response.status_code == 503
    assert len(stripe_calls(mocked)) == 3  # the SDK's own two retries, then we give up
    assert order_row(order).state == OrderState.PAYING
    assert count(StripeEvent) == 0
    mocked.replace("GET", SESSION_URL, json=paid(checkout_session, order))
    assert deliver(client, event).status_code == 200
    assert order_row(order).state == OrderState.PAID


# --- the webhook and the learner ------------------------------------------------------------------


@pytest.mark.parametrize(
    "sequence",
    [
        ("webhook", "return"),
        ("return", "webhook"),
        ("webhook", "webhook", "return"),
        ("return",),
        ("webhook", "status"),
    ],
    ids=["before-return", "after-return", "twice", "never", "no-return-status-page"],
)
def test_webhook_before_after_twice_or_never_fulfils_exactly_once(
    client, mocked, checkout_session, sequence
):
    order = paying_order()
    mocked.get(SESSION_URL, json=paid(checkout_session, order))
    mocked.post(FULFIL_URL, json={"redirect_url": THANKS, "purchase": {"state": "SUCCESS"}})
    event = build_event("checkout.session.completed", paid(checkout_session, order))
    last = None
    for step in sequence:
        if step == "webhook":
            assert deliver(client, event).status_code == 200
        elif step == "return":
            last = client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")
        else:
            last = client.get(f"/orders/{order.reference}/status")
    assert last.status_code == 303
    assert last.headers["Location"] == THANKS
    fulfils = [c for c in skilljar_calls(mocked) if c.request.url == FULFIL_URL]
    assert len(fulfils) == 1
    assert json.loads(fulfils[0].request.body)["state"] == "SUCCESS"
    assert order_row(order).state == OrderState.FULFILLED
    assert len(fulfil_jobs()) == 1


def test_webhook_during_a_slow_order_commit_records_the_payment_and_pay_shows_status(
    app, client, mocked, purchase, checkout_session
):
    """The Checkout Session exists at Stripe (and is paid, and its webhook arrives) before the
    portal has committed `open -> paying` with the session id. The payment is recorded from the
    webhook; the learner's own pay request then lands on the status page, never on Stripe."""
    mocked.get(PURCHASE_URL, json=purchase())
    review = client.get("/skilljar/checkout?purchase_id=p1abc")
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    with db.reader() as session:
        order = session.scalar(select(Order))
    assert order.state == OrderState.OPEN
    webhook_client = app.test_client()
    seen = {}

    def create_session(request):
        body = dict(p.split("=", 1) for p in request.body.split("&"))
        reference = body["client_reference_id"]
        created = paid(checkout_session, order)
        assert reference == order.reference
        mocked.get(SESSION_URL, json=created)
        seen["state during create"] = order_row(order).state
        seen["webhook"] = deliver(
            webhook_client, build_event("checkout.session.completed", created)
        )
        return 200, {}, json.dumps(session_for(checkout_session, order))

    mocked.add_callback("POST", SESSIONS_URL, callback=create_session)
    response = client.post(f"/orders/{order.reference}/pay", data={"csrf_token": token})
    assert seen["state during create"] == OrderState.OPEN
    assert seen["webhook"].status_code == 200
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/orders/{order.reference}/status")
    row = order_row(order)
    assert row.state == OrderState.PAID
    assert row.stripe_session_id == "cs_test_1"
    assert len(fulfil_jobs()) == 1
    mocked.post(FULFIL_URL, json={"redirect_url": THANKS, "purchase": {"state": "SUCCESS"}})
    status = client.get(response.headers["Location"])
    assert status.status_code == 303  # the status page finished the fulfilment and moves on
    assert status.headers["Location"] == THANKS


def test_status_page_after_a_stripe_outage_on_return_finds_the_payment(
    client, mocked, checkout_session, no_sdk_sleep
):
    """The return page could not reach Stripe, so the order is still `paying`: the status page
    asks Stripe again and records the payment instead of offering to pay again."""
    order = paying_order()
    mocked.get(SESSION_URL, json={"error": {"type": "api_error", "message": "down"}}, status=500)
    back = client.get(f"/orders/{order.reference}/return?session_id=cs_test_1")
    assert back.status_code == 303
    assert order_row(order).state == OrderState.PAYING
    mocked.replace("GET", SESSION_URL, json=paid(checkout_session, order))
    mocked.post(FULFIL_URL, json={"redirect_url": THANKS, "purchase": {"state": "SUCCESS"}})
    status = client.get(back.headers["Location"])
    assert status.status_code == 303
    assert status.headers["Location"] == THANKS
    assert order_row(order).state == OrderState.FULFILLED
