"""Cleeng's split authorise and capture (issue 26): `subscriptionReadyForPaymentAuthorisation`
holds the renewal on the card (a PaymentIntent with `capture_method=manual`) and reports a payment
`authorized`, in Cleeng's terms; `subscriptionReadyForPaymentCapture` for the same period captures
that hold and `PATCH`es the payment to `captured`. Cleeng and Stripe stood in by `responses`."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from portal.db import db
from portal.models import Job, JobState
from portal.platforms.cleeng.models import CleengCustomer, CleengPayment
from tests.test_cleeng import (
    CLEENG_BASE,
    INTENTS_URL,
    ORDERS_URL,
    PAYMENTS_URL,
    SETTINGS,
    body,
    cleeng_payment,
    count,
    declined,
    deliver,
    envelope,
    form,
    recurring_order,
    renewal_event,
    run_worker,
    sent,
)


@pytest.fixture
def app(make_app):
    return make_app(**SETTINGS)


@pytest.fixture
def saved_card(app):
    """The Cleeng customer's Stripe Customer, as the initial purchase left it."""
    with db.transaction() as session:
        session.add(CleengCustomer(customer_id="927751142", stripe_customer_id="cus_1"))


AUTHORISATION = "subscriptionReadyForPaymentAuthorisation"
PAYMENT_URL = f"{CLEENG_BASE}/payments/1536331076"
CAPTURE_URL = f"{INTENTS_URL}/pi_2/capture"


def held(intent_id: str = "pi_2") -> dict:
    return {
        "id": intent_id,
        "object": "payment_intent",
        "status": "requires_capture",
        "amount": 1210,
        "amount_capturable": 1210,
        "capture_method": "manual",
    }


def authorisation(**data) -> dict:
    return renewal_event(topic=AUTHORISATION, dunningStatus="authorize", **data)


def attempt() -> CleengPayment:
    with db.reader() as session:
        return session.scalar(select(CleengPayment))


def authorise(app, client, mocked) -> None:
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, json=held())
    mocked.post(
        PAYMENTS_URL,
        json=envelope(**cleeng_payment(id=1536331076, orderId=444555666, status="authorized")),
    )
    assert deliver(client, authorisation()).status_code == 200
    run_worker(app, mocked)


def test_an_authorisation_holds_the_renewal_and_reports_authorized(app, client, mocked, saved_card):
    authorise(app, client, mocked)
    (charge,) = sent(mocked, "POST", INTENTS_URL)
    assert form(charge.body)["capture_method"] == "manual"
    assert form(charge.body)["amount"] == "1210"
    (report,) = sent(mocked, "POST", PAYMENTS_URL)
    assert body(report) == {
        "orderId": 444555666,
        "status": "authorized",
        "paymentOperation": "recurring-payment",
        "subscriptionId": 332332332,
        "externalPaymentId": "pi_2",
        "paymentDetailsId": 665665665,
    }
    row = attempt()
    assert (row.status, row.cleeng_payment_id, row.stripe_payment_intent_id) == (
        "authorized",
        "1536331076",
        "pi_2",
    )
    assert not sent(mocked, "POST", CAPTURE_URL)


def test_the_capture_event_captures_the_same_hold_once(app, client, mocked, saved_card):
    authorise(app, client, mocked)
    mocked.post(CAPTURE_URL, json={**held(), "status": "succeeded", "amount_received": 1210})
    mocked.patch(PAYMENT_URL, json=envelope(**cleeng_payment(id=1536331076, status="captured")))
    assert deliver(client, renewal_event()).status_code == 200
    run_worker(app, mocked)
    (capture,) = sent(mocked, "POST", CAPTURE_URL)
    assert capture.headers["Idempotency-Key"] == "cleeng-capture-pi_2"
    (patch,) = sent(mocked, "PATCH", PAYMENT_URL)
    assert body(patch) == {"status": "captured", "externalPaymentId": "pi_2"}
    # One order, one PaymentIntent, one payment at Cleeng: the capture made no new charge.
    assert len(sent(mocked, "POST", ORDERS_URL)) == 1
    assert len(sent(mocked, "POST", INTENTS_URL)) == 1
    assert len(sent(mocked, "POST", PAYMENTS_URL)) == 1
    assert attempt().status == "captured"
    assert attempt().reported_at is not None

    # The capture event again (a later dunning date for the same period), and the authorisation
    # again: nothing more is charged, captured or reported.
    deliver(client, renewal_event(dunningAttemptDate="2026-12-22T11:00:00Z"))
    deliver(client, authorisation(dunningAttemptDate="2026-12-21T11:00:00Z"))
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", CAPTURE_URL)) == 1
    assert len(sent(mocked, "PATCH", PAYMENT_URL)) == 1
    assert len(sent(mocked, "POST", INTENTS_URL)) == 1
    assert count(Job, Job.kind == "cleeng_renewal", Job.state != JobState.DONE) == 0


def test_cleeng_down_after_the_capture_retries_the_report_not_the_capture(
    app, client, mocked, saved_card
):
    authorise(app, client, mocked)
    mocked.post(CAPTURE_URL, json={**held(), "status": "succeeded"})
    mocked.patch(PAYMENT_URL, status=503, json={"responseData": {}, "errors": ["down"]})
    mocked.patch(PAYMENT_URL, json=envelope(**cleeng_payment(id=1536331076, status="captured")))
    deliver(client, renewal_event())
    run_worker(app, mocked)
    assert len(sent(mocked, "POST", CAPTURE_URL)) == 1
    assert len(sent(mocked, "PATCH", PAYMENT_URL)) == 2
    assert count(Job, Job.kind == "cleeng_renewal", Job.state == JobState.DONE) == 2


def test_a_hold_that_expired_is_reported_rejected_and_the_next_capture_charges(
    app, client, mocked, saved_card
):
    """Stripe voids an uncaptured authorisation after 7 days: the capture is refused, the
    payment becomes rejected at Cleeng, and Cleeng's next dunning attempt charges at once."""
    authorise(app, client, mocked)
    mocked.post(
        CAPTURE_URL,
        status=400,
        json={
            "error": {
                "type": "invalid_request_error",
                "code": "payment_intent_unexpected_state",
                "message": "This PaymentIntent could not be captured because it has a status "
                "of canceled.",
            }
        },
    )
    mocked.patch(PAYMENT_URL, json=envelope(**cleeng_payment(id=1536331076, status="rejected")))
    deliver(client, renewal_event())
    run_worker(app, mocked)
    (patch,) = sent(mocked, "PATCH", PAYMENT_URL)
    assert body(patch)["status"] == "rejected"
    assert "could not be captured" in body(patch)["rejectedReason"]
    assert attempt().renewal_key is None  # the period is free again

    mocked.post(ORDERS_URL, json=envelope(order=recurring_order(444555667)))
    mocked.replace(
        "POST",
        INTENTS_URL,
        json={"id": "pi_5", "object": "payment_intent", "status": "succeeded", "amount": 1210},
    )
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment(id=1536331077, orderId=444555667)))
    deliver(client, renewal_event(dunningAttemptDate="2026-12-23T09:00:00Z"))
    run_worker(app, mocked)
    second = sent(mocked, "POST", INTENTS_URL)[-1]
    assert "capture_method" not in form(second.body)
    assert body(sent(mocked, "POST", PAYMENTS_URL)[-1])["status"] == "captured"


def test_a_declined_authorisation_is_rejected_and_the_capture_charges_at_once(
    app, client, mocked, saved_card
):
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, status=402, json=declined())
    mocked.post(PAYMENTS_URL, json=envelope(**cleeng_payment(status="rejected")))
    deliver(client, authorisation())
    run_worker(app, mocked)
    assert body(sent(mocked, "POST", PAYMENTS_URL)[0])["status"] == "rejected"
    assert not sent(mocked, "POST", CAPTURE_URL)


def test_a_capture_before_the_authorisation_was_reported_waits(app, client, mocked, saved_card):
    """The capture event overtakes the authorisation's report (Cleeng was slow): the capture
    waits for it (retried) instead of capturing a payment Cleeng does not know yet."""
    mocked.post(ORDERS_URL, json=envelope(order=recurring_order()))
    mocked.post(INTENTS_URL, json=held())
    mocked.post(PAYMENTS_URL, status=503, json={"responseData": {}, "errors": ["down"]})
    mocked.post(
        PAYMENTS_URL,
        json=envelope(**cleeng_payment(id=1536331076, orderId=444555666, status="authorized")),
    )
    mocked.post(CAPTURE_URL, json={**held(), "status": "succeeded"})
    mocked.patch(PAYMENT_URL, json=envelope(**cleeng_payment(id=1536331076, status="captured")))
    deliver(client, authorisation())
    deliver(client, renewal_event())
    for _ in range(3):
        run_worker(app, mocked)
    assert [body(r)["status"] for r in sent(mocked, "POST", PAYMENTS_URL)] == [
        "authorized",
        "authorized",
    ]
    assert len(sent(mocked, "POST", CAPTURE_URL)) == 1
    assert len(sent(mocked, "PATCH", PAYMENT_URL)) == 1
    assert attempt().status == "captured"


@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    """Retries due at once, so one worker pass runs them."""
    from portal import jobs

    monkeypatch.setattr(jobs, "backoff_seconds", lambda settings, attempts: 0)
