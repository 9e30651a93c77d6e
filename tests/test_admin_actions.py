"""Operator actions on an order, with Stripe and Skilljar stood in by `responses`: retry
fulfilment, refund (full and partial, reflected to Skilljar through the job queue), cancel,
resolve. Each is confirmed, changes the order with a compare-and-set, lands on the timeline and
in the audit log, and is refused to the roles that may not do it."""

from __future__ import annotations

import base64
import json
import re
from datetime import datetime, timedelta
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import select

from portal.db import db
from portal.models import Job, JobState, OrderState, utcnow
from tests.admin_support import (
    add_fulfil_job,
    audit_entries,
    csrf,
    events,
    make_order,
    reload,
)
from tests.conftest import SKILLJAR_BASE, STRIPE_BASE

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

PURCHASE_URL = f"{SKILLJAR_BASE}/v1/purchases/p1abc"
REFUNDS_URL = f"{STRIPE_BASE}/v1/refunds"
SESSION_URL = f"{STRIPE_BASE}/v1/checkout/sessions/cs_test_1"
BASIC = "Basic " + base64.b64encode(b"sj-unit-key:").decode()


def form(body) -> dict:
    return dict(parse_qsl(body if isinstance(body, str) else body.decode()))


def act(client, order, action: str, **fields):
    """Open the action's confirmation page and submit it (confirmed unless told otherwise)."""
    page = client.get(f"/admin/orders/{order.reference}/{action}")
    assert page.status_code == 200
    data = {"csrf_token": csrf(page.text), "confirm": "y", **fields}
    hidden = re.search(r'name="refunded_before" type="hidden" value="(\d+)"', page.text)
    if hidden and "refunded_before" not in fields:
        data["refunded_before"] = hidden.group(1)
    return client.post(
        f"/admin/orders/{order.reference}/{action}",
        data={k: v for k, v in data.items() if v is not None},
    )


def flashed(client, response) -> str:
    assert response.status_code == 303, response.text
    return client.get(response.headers["Location"]).text


def refused(response, reason: str) -> str:
    """A refund the console refused: the same form again (400), the reason as it was typed."""
    assert response.status_code == 400, response.text
    assert re.search(rf">\s*{re.escape(reason)}</textarea>", response.text)
    return response.text


def stripe_refund(amount: int, refund_id: str = "re_test_1") -> dict:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "charge": "ch_test_1",
        "currency": "usd",
        "payment_intent": "pi_test_1",
        "status": "succeeded",
    }


def requests_to(mocked, url: str, method: str | None = None):
    return [
        c.request
        for c in mocked.calls
        if c.request.url.split("?")[0] == url and (method is None or c.request.method == method)
    ]


# --- retry fulfilment --------------------------------------------------------------------------


def test_retry_fulfils_a_fulfil_failed_order_now(console, mocked):
    order = make_order(state=OrderState.FULFIL_FAILED, failure_reason="Skilljar: HTTP 503")
    add_fulfil_job(order, state=JobState.DEAD, attempts=12)
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    client = console("operator")
    response = act(client, order, "retry")
    assert "The platform confirmed order" in flashed(client, response)
    fulfil = requests_to(mocked, f"{PURCHASE_URL}/fulfill")
    assert len(fulfil) == 1
    assert fulfil[0].headers["Authorization"] == BASIC
    assert json.loads(fulfil[0].body)["state"] == "SUCCESS"
    after = reload(order)
    assert after.state == OrderState.FULFILLED
    assert after.failure_reason is None
    with db.reader() as session:
        job = session.scalar(select(Job).where(Job.dedupe_key == f"fulfil:{order.id}"))
    assert (job.state, job.attempts) == (JobState.DONE, 1)  # a fresh set of attempts
    states = [e.detail["to"] for e in events(order, "state")]
    assert states == ["open", "paid", "fulfilled"]
    note = events(order, "operator")[-1]
    assert note.detail["action"] == "retry"
    assert note.detail["actor"] == "operator@example.com"
    entry = audit_entries("orders.retry")[-1]
    assert (entry.actor, entry.target, entry.outcome) == (
        "operator@example.com",
        order.reference,
        "ok",
    )
    assert entry.detail == {"from_state": "fulfil_failed"}


def test_retry_makes_a_backed_off_job_due_now(console, mocked):
    order = make_order(state=OrderState.PAID)
    add_fulfil_job(order, state=JobState.QUEUED, attempts=1, run_at=utcnow() + timedelta(hours=1))
    mocked.get(PURCHASE_URL, json={"id": "p1abc", "state": "CREATED"})  # a retry checks first
    mocked.post(f"{PURCHASE_URL}/fulfill", json={"detail": "down"}, status=503)
    client = console("operator")
    text = flashed(client, act(client, order, "retry"))
    assert "not confirmed yet (Skilljar fulfil: HTTP 503)" in text
    assert "the job queue keeps trying" in text
    assert reload(order).state == OrderState.PAID
    with db.reader() as session:
        job = session.scalar(select(Job).where(Job.dedupe_key == f"fulfil:{order.id}"))
    assert job.state == JobState.QUEUED
    assert job.attempts == 2  # a queued job keeps its count: the back-off still ends


def test_a_retry_that_fails_for_good_goes_back_to_fulfil_failed(console, mocked):
    order = make_order(state=OrderState.FULFIL_FAILED)
    add_fulfil_job(order, state=JobState.DEAD, attempts=12)
    mocked.post(f"{PURCHASE_URL}/fulfill", json={"detail": "Invalid offer."}, status=400)
    mocked.get(PURCHASE_URL, json={"id": "p1abc", "state": "CREATED"})
    client = console("operator")
    text = flashed(client, act(client, order, "retry"))
    assert "Fulfilment failed again (Skilljar fulfil: HTTP 400)" in text
    assert reload(order).state == OrderState.FULFIL_FAILED


def test_retry_needs_the_confirmation_tick(console, mocked):
    order = make_order(state=OrderState.FULFIL_FAILED)
    add_fulfil_job(order)
    client = console("operator")
    response = act(client, order, "retry", confirm=None)
    assert response.status_code == 400
    assert "Tick the box to confirm." in response.text
    assert len(mocked.calls) == 0  # nothing was sent
    assert reload(order).state == OrderState.FULFIL_FAILED
    assert audit_entries("orders.retry") == []


def test_retry_is_refused_for_a_fulfilled_order(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    client = console("operator")
    text = flashed(client, act(client, order, "retry"))
    assert "Only a paid, unfulfilled order can be retried" in text
    assert len(mocked.calls) == 0
    assert audit_entries("orders.retry")[-1].outcome == "refused"


# --- refunds -----------------------------------------------------------------------------------


def test_full_refund_goes_through_stripe_and_is_reflected_to_skilljar(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(7840))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED", "refund_cents": 7840})
    client = console("operator")
    page = client.get(f"/admin/orders/{order.reference}/refund")
    assert 'value="78.40"' in page.text  # the full amount left is proposed
    response = act(client, order, "refund", amount="78.40", reason="Learner asked, course full")
    text = flashed(client, response)
    assert "Refunded $78.40 (Stripe refund re_test_1). Skilljar was told." in text

    (create,) = requests_to(mocked, REFUNDS_URL, "POST")
    assert create.headers["Authorization"] == "Bearer sk_test_unit"
    assert create.headers["Idempotency-Key"] == f"{order.reference}-refund-0-7840"
    assert form(create.body) == {
        "payment_intent": "pi_test_1",
        "amount": "7840",
        "metadata[order_reference]": order.reference,
    }
    (put,) = requests_to(mocked, PURCHASE_URL, "PUT")
    assert put.headers["Authorization"] == BASIC
    body = json.loads(put.body)
    assert set(body) == {"refund_cents", "refunded_at", "state"}
    assert body["refund_cents"] == 7840
    assert body["state"] == "REFUNDED"
    assert body["refunded_at"].endswith("Z")
    assert abs(datetime.fromisoformat(body["refunded_at"]) - utcnow()) < timedelta(minutes=1)

    after = reload(order)
    assert after.state == OrderState.REFUNDED
    assert after.amount_refunded_minor == 7840
    note = events(order, "operator")[-1]
    assert "refunded $78.40 through Stripe: Learner asked, course full" in note.message
    assert note.detail["refund"] == "re_test_1"
    entry = audit_entries("orders.refund")[-1]
    assert entry.outcome == "ok"
    assert entry.detail["amount_minor"] == 7840
    assert entry.detail["reason"] == "Learner asked, course full"
    assert entry.ip_address == "127.0.0.1"
    # The timeline shows the calls out.
    http = [e.detail["url"] for e in events(order, "http")]
    assert "refunds.create" in http
    assert PURCHASE_URL in http


def test_partial_refunds_add_up_and_skilljar_gets_the_running_total(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(1000))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
    client = console("operator")
    flashed(client, act(client, order, "refund", amount="10", reason="Late start discount"))
    assert reload(order).state == OrderState.PARTIALLY_REFUNDED
    assert reload(order).amount_refunded_minor == 1000
    mocked.replace("POST", REFUNDS_URL, json=stripe_refund(6840, "re_test_2"))
    page = client.get(f"/admin/orders/{order.reference}/refund")
    assert 'value="68.40"' in page.text
    flashed(client, act(client, order, "refund", amount="68.40", reason="Cancelled after all"))
    creates = requests_to(mocked, REFUNDS_URL, "POST")
    assert [form(c.body)["amount"] for c in creates] == ["1000", "6840"]
    assert creates[1].headers["Idempotency-Key"] == f"{order.reference}-refund-1000-6840"
    puts = [json.loads(c.body)["refund_cents"] for c in requests_to(mocked, PURCHASE_URL, "PUT")]
    assert puts == [1000, 7840]
    after = reload(order)
    assert (after.state, after.amount_refunded_minor) == (OrderState.REFUNDED, 7840)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("78.41", "at most $78.40"),
        ("0", "more than zero"),
        ("1.234", "more decimals than USD allows"),
        ("ten", "is not an amount"),
    ],
)
def test_a_refund_amount_outside_the_payment_is_refused(console, mocked, amount, message):
    order = make_order(state=OrderState.FULFILLED)
    client = console("operator")
    response = act(client, order, "refund", amount=amount, reason="testing limits")
    text = response.text if response.status_code == 400 else flashed(client, response)
    assert message in text
    assert requests_to(mocked, REFUNDS_URL) == []
    assert reload(order).amount_refunded_minor == 0


def test_a_partial_refund_is_refused_before_the_platform_confirmed(console, mocked):
    order = make_order(state=OrderState.PAID)
    client = console("operator")
    response = act(client, order, "refund", amount="10.00", reason="partial")
    text = refused(response, "partial")
    assert "A partial refund needs a fulfilled order" in text
    assert requests_to(mocked, REFUNDS_URL) == []
    assert reload(order).state == OrderState.PAID


def test_a_paid_order_can_be_refunded_in_full_and_is_then_never_fulfilled(console, mocked):
    order = make_order(state=OrderState.FULFIL_FAILED)
    add_fulfil_job(order)
    mocked.post(REFUNDS_URL, json=stripe_refund(7840))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
    client = console("operator")
    flashed(client, act(client, order, "refund", amount="78.40", reason="Could not enrol"))
    assert reload(order).state == OrderState.REFUNDED
    assert requests_to(mocked, f"{PURCHASE_URL}/fulfill") == []


def test_a_second_submit_of_the_same_refund_page_does_not_refund_twice(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(1000))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
    client = console("operator")
    page = client.get(f"/admin/orders/{order.reference}/refund")
    data = {
        "csrf_token": csrf(page.text),
        "confirm": "y",
        "amount": "10.00",
        "reason": "double click",
        "refunded_before": "0",
    }
    first = client.post(f"/admin/orders/{order.reference}/refund", data=data)
    second = client.post(f"/admin/orders/{order.reference}/refund", data=data)
    assert "changed since you opened the refund page" in refused(second, "double click")
    assert first.status_code == 303
    assert len(requests_to(mocked, REFUNDS_URL, "POST")) == 1
    assert reload(order).amount_refunded_minor == 1000


def test_stripe_refusing_the_refund_changes_nothing(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(
        REFUNDS_URL,
        status=400,
        json={
            "error": {
                "type": "invalid_request_error",
                "code": "charge_already_refunded",
                "message": "Charge ch_test_1 has already been refunded.",
            }
        },
    )
    client = console("operator")
    text = refused(act(client, order, "refund", amount="78.40", reason="again"), "again")
    assert "Stripe did not refund" in text
    assert reload(order).state == OrderState.FULFILLED
    assert requests_to(mocked, PURCHASE_URL, "PUT") == []
    entry = audit_entries("orders.refund")[-1]
    assert entry.outcome == "failed"
    assert "refund of $78.40 failed" in events(order, "operator")[-1].message


def test_a_skilljar_outage_after_the_refund_is_retried_by_the_queue(console, mocked, app):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(7840))
    mocked.put(PURCHASE_URL, json={"detail": "down"}, status=503)
    client = console("operator")
    text = flashed(client, act(client, order, "refund", amount="78.40", reason="outage test"))
    assert "Skilljar has not confirmed yet (Skilljar purchase update: HTTP 503)" in text
    assert reload(order).state == OrderState.REFUNDED  # the money went back regardless
    with db.reader() as session:
        job = session.scalar(select(Job).where(Job.kind == "platform_refund"))
    assert job.state == JobState.QUEUED
    mocked.replace("PUT", PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
    from portal.jobs import Worker

    counts = Worker(app.extensions["portal"]).run(once=True)
    assert counts["done"] >= 1
    puts = requests_to(mocked, PURCHASE_URL, "PUT")
    assert len(puts) == 2
    assert json.loads(puts[-1].body)["refund_cents"] == 7840
    with db.reader() as session:
        assert session.get(Job, job.id).state == JobState.DONE


def test_the_webhook_recording_the_refund_first_is_not_counted_twice(console, mocked, monkeypatch):
    """The console refund's own charge.refunded can be recorded (by its Stripe refund id)
    before the console's own update: the refund counts once and is reported once."""
    order = make_order(state=OrderState.FULFILLED)
    from portal import refunds
    from portal.stripe_gateway import StripeGateway

    original = StripeGateway.refund

    def refund_then_webhook(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        recorded = refunds.record(order.id, result, source="stripe")
        assert recorded.new
        return result

    monkeypatch.setattr(StripeGateway, "refund", refund_then_webhook)
    mocked.post(REFUNDS_URL, json=stripe_refund(1000))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "SUCCESS", "refund_cents": 1000})
    client = console("operator")
    text = flashed(client, act(client, order, "refund", amount="10.00", reason="webhook race"))
    assert "Skilljar was told" in text
    after = reload(order)
    assert (after.state, after.amount_refunded_minor) == (OrderState.PARTIALLY_REFUNDED, 1000)
    puts = requests_to(mocked, PURCHASE_URL, "PUT")
    assert [json.loads(p.body) for p in puts] == [{"refund_cents": 1000}]
    with db.reader() as session:
        keys = session.scalars(select(Job.dedupe_key).where(Job.kind == "platform_refund")).all()
    assert keys == ["platform_refund:re_test_1"]


# --- cancel ------------------------------------------------------------------------------------


def test_cancel_expires_the_stripe_session_first_then_tells_skilljar(console, mocked):
    order = make_order(state=OrderState.PAYING)
    session = {
        "id": "cs_test_1",
        "object": "checkout.session",
        "status": "expired",
        "payment_status": "unpaid",
        "client_reference_id": order.reference,
        "url": None,
    }
    mocked.post(f"{SESSION_URL}/expire", json=session)
    mocked.get(SESSION_URL, json=session)
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/course", "purchase": {"state": "CANCELLED"}},
    )
    client = console("operator")
    text = flashed(client, act(client, order, "cancel", reason="Learner asked by email"))
    assert "is cancelled and the platform was told" in text
    methods = [(c.request.method, c.request.url) for c in mocked.calls]
    assert methods.index(("POST", f"{SESSION_URL}/expire")) < methods.index(
        ("POST", f"{PURCHASE_URL}/fulfill")
    )
    assert json.loads(requests_to(mocked, f"{PURCHASE_URL}/fulfill")[0].body) == {
        "state": "CANCELLED"
    }
    assert reload(order).state == OrderState.CANCELLED
    assert "order cancelled: Learner asked by email" in events(order, "operator")[-1].message
    assert audit_entries("orders.cancel")[-1].outcome == "ok"


def test_cancel_finds_the_order_was_paid_meanwhile(console, mocked):
    order = make_order(state=OrderState.PAYING)
    mocked.post(
        f"{SESSION_URL}/expire",
        status=400,
        json={"error": {"type": "invalid_request_error", "message": "not open"}},
    )
    mocked.get(
        SESSION_URL,
        json={
            "id": "cs_test_1",
            "object": "checkout.session",
            "status": "complete",
            "payment_status": "paid",
            "client_reference_id": order.reference,
            "amount_total": 7840,
            "currency": "usd",
            "payment_intent": "pi_test_9",
            "total_details": {"amount_tax": 0},
        },
    )
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    client = console("operator")
    text = flashed(client, act(client, order, "cancel", reason="Learner asked"))
    assert "The order was not cancelled" in text
    assert reload(order).state in {OrderState.PAID, OrderState.FULFILLED}
    assert audit_entries("orders.cancel")[-1].outcome == "refused"


def test_a_paid_order_cannot_be_cancelled(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    client = console("operator")
    text = flashed(client, act(client, order, "cancel", reason="try"))
    assert "Only an unpaid order can be cancelled" in text
    assert len(mocked.calls) == 0


# --- resolve -----------------------------------------------------------------------------------


def test_resolve_marks_a_fulfil_failed_order_fulfilled_with_the_reason(console, mocked):
    order = make_order(state=OrderState.FULFIL_FAILED)
    add_fulfil_job(order)
    client = console("operator")
    text = flashed(
        client, act(client, order, "resolve", reason="Enrolled by hand in the Skilljar dashboard")
    )
    assert "is marked fulfilled" in text
    after = reload(order)
    assert after.state == OrderState.FULFILLED
    assert after.fulfilled_at is not None
    note = events(order, "operator")[-1]
    assert note.message == (
        "marked resolved: Enrolled by hand in the Skilljar dashboard (by operator@example.com)"
    )
    assert note.detail["reason"] == "Enrolled by hand in the Skilljar dashboard"
    assert len(mocked.calls) == 0  # nothing is sent to the platform


def test_resolve_needs_a_reason(console):
    order = make_order(state=OrderState.FULFIL_FAILED)
    client = console("operator")
    response = act(client, order, "resolve", reason="")
    assert response.status_code == 400
    assert reload(order).state == OrderState.FULFIL_FAILED


def test_resolve_is_only_for_fulfil_failed(console):
    order = make_order(state=OrderState.PAID)
    client = console("operator")
    text = flashed(client, act(client, order, "resolve", reason="nothing to resolve"))
    assert "Only a fulfil_failed order can be marked resolved" in text
    assert reload(order).state == OrderState.PAID


# --- who may act -------------------------------------------------------------------------------


@pytest.mark.parametrize("action", ["retry", "refund", "cancel", "resolve"])
def test_a_marketer_cannot_act_on_orders(console, mocked, action):
    order = make_order(state=OrderState.FULFIL_FAILED)
    marketer = console("marketer")
    token = csrf(marketer.get("/admin/branding").text)
    response = marketer.post(
        f"/admin/orders/{order.reference}/{action}",
        data={
            "csrf_token": token,
            "confirm": "y",
            "reason": "sneaky",
            "amount": "78.40",
            "refunded_before": "0",
        },
    )
    assert response.status_code == 403
    assert len(mocked.calls) == 0
    assert reload(order).state == OrderState.FULFIL_FAILED
    assert audit_entries("access.denied")[-1].actor == "marketer@example.com"


def test_an_admin_can_refund(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(7840))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "REFUNDED"})
    client = console("admin")
    flashed(client, act(client, order, "refund", amount="78.40", reason="admin refund"))
    assert reload(order).state == OrderState.REFUNDED


# --- against the sandbox, through the real stripe SDK ---------------------------------------------


def test_refunds_through_the_sandbox_reach_stripe_and_skilljar(sandbox_server, fast_hashing):
    from portal.http import UpstreamError
    from tests.admin_support import buy_in_sandbox, make_user, sign_in

    server = sandbox_server()
    purchase_id = buy_in_sandbox(server.url)
    with server.app.app_context():
        make_user("ops@example.com", "operator")
    client = server.app.test_client()
    assert sign_in(client, "ops@example.com").status_code == 303
    found = client.get(f"/admin/orders?platform_ref={purchase_id}")
    reference = re.search(r'href="/admin/orders/(ord_[\w-]+)"', found.text).group(1)
    with db.reader() as session:
        from portal.models import Order

        order = session.scalar(select(Order).where(Order.reference == reference))
    assert order.state == OrderState.FULFILLED
    text = flashed(client, act(client, order, "refund", amount="10.00", reason="partial"))
    assert "Skilljar was told" in text

    purchase = server.store.get("skilljar.purchase", purchase_id)
    # A partial refund: Skilljar hears refund_cents only, the purchase stays SUCCESS.
    assert (purchase["state"], purchase["refund_cents"]) == ("SUCCESS", 1000)
    intent = server.store.get("payment_intent", order.stripe_payment_intent_id)
    charge = server.store.get("charge", intent["latest_charge"])
    assert (charge["amount_refunded"], charge["refunded"]) == (1000, False)
    assert reload(order).state == OrderState.PARTIALLY_REFUNDED

    # The stand-in refuses what real Stripe refuses, and replays an idempotent retry.
    stripe = server.services.stripe
    with pytest.raises(
        UpstreamError, match=r"greater than unrefunded amount on charge \(\$39.00\)"
    ):
        stripe.refund(order.stripe_payment_intent_id, 3901, "too-much")
    first = stripe.refund(order.stripe_payment_intent_id, 900, "same-key")
    again = stripe.refund(order.stripe_payment_intent_id, 900, "same-key")
    assert first["id"] == again["id"]
    assert server.store.get("charge", charge["id"])["amount_refunded"] == 1900
    with pytest.raises(UpstreamError, match="same parameters"):
        stripe.refund(order.stripe_payment_intent_id, 800, "same-key")
    fetched = stripe.client.v1.refunds.retrieve(first["id"])
    assert (fetched.amount, fetched.payment_intent) == (900, order.stripe_payment_intent_id)
    stripe.refund(order.stripe_payment_intent_id, 3000, "the-rest")
    with pytest.raises(UpstreamError, match="has already been refunded"):
        stripe.refund(order.stripe_payment_intent_id, 1, "nothing-left")
    events = [e["type"] for e in server.store.list("event")]
    assert events.count("charge.refunded") == 3


def test_a_platform_without_refunds_has_nothing_to_report():
    from portal.platforms import Outcome, Platform

    class Quiet(Platform):
        name = "quiet"

        def fulfil(self, order, *, retry=False):
            return Outcome(redirect_url=None)

        def cancel(self, order):
            return Outcome(redirect_url=None)

    outcome = Quiet().refund(object(), 100)
    assert (outcome.redirect_url, outcome.note) == (None, "nothing to report")


def test_a_refund_on_a_platform_without_a_refund_api_says_so(console, mocked):
    order = make_order(state=OrderState.FULFILLED, platform="openlearning", platform_ref="jti-1")
    mocked.post(REFUNDS_URL, json=stripe_refund(7840))
    client = console("operator")
    text = flashed(client, act(client, order, "refund", amount="78.40", reason="no API there"))
    assert (
        "Refunded $78.40 (Stripe refund re_test_1). OpenLearning cannot take refunds: an "
        "operator must remove the learner&#39;s access by hand"
    ) in text
    assert reload(order).state == OrderState.REFUNDED
    assert [c.request.url for c in mocked.calls] == [REFUNDS_URL]
    (alert,) = events(order, "alert")
    assert alert.detail["alert"] == "refund_not_taken"
    assert "refund of $78.40 on OpenLearning" in alert.message


# --- amounts as the operator writes them (issue 27) ----------------------------------------------

FRENCH = {"Accept-Language": "fr-FR,fr;q=0.9"}


def act_as(client, order, headers, **fields):
    page = client.get(f"/admin/orders/{order.reference}/refund", headers=headers)
    assert page.status_code == 200
    data = {"csrf_token": csrf(page.text), "confirm": "y", "refunded_before": "0", **fields}
    return page, client.post(f"/admin/orders/{order.reference}/refund", data=data, headers=headers)


def test_a_french_operator_refunds_50_comma_00(console, mocked):
    order = make_order(state=OrderState.FULFILLED)
    mocked.post(REFUNDS_URL, json=stripe_refund(5000))
    mocked.put(PURCHASE_URL, json={"id": "p1abc", "state": "SUCCESS"})
    client = console("operator")
    page, response = act_as(client, order, FRENCH, amount="50,00", reason="geste commercial")
    assert 'value="78,40"' in page.text  # what is left, as the operator writes it
    assert response.status_code == 303, response.text
    (create,) = requests_to(mocked, REFUNDS_URL, "POST")
    assert form(create.body)["amount"] == "5000"
    assert reload(order).amount_refunded_minor == 5000


@pytest.mark.parametrize(
    ("headers", "amount", "message"),
    [
        pytest.param(FRENCH, "100,00", "at most", id="fr-over-the-limit"),
        pytest.param({"Accept-Language": "en-US"}, "50,00", "write it like", id="en-comma"),
        pytest.param(FRENCH, "50.00", "write it like", id="fr-point"),
        pytest.param(FRENCH, "50,001", "more decimals", id="fr-too-precise"),
    ],
)
def test_a_refused_amount_keeps_the_typed_reason_and_amount(
    console, mocked, headers, amount, message
):
    order = make_order(state=OrderState.FULFILLED)
    client = console("operator")
    _page, response = act_as(client, order, headers, amount=amount, reason="Learner asked twice")
    text = refused(response, "Learner asked twice")
    assert message in text
    assert f'value="{amount}"' in text
    assert requests_to(mocked, REFUNDS_URL) == []
    assert reload(order).amount_refunded_minor == 0
