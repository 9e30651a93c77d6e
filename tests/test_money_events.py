"""Money after the happy path, end to end against the stand-ins (issue 26): refunds made in
Stripe's dashboard (full and partial) and disputes (opened, then won or lost) reach Skilljar,
Cleeng and the merchant's endpoint exactly once, through the one refund and dispute services and
the job queue, under platform faults and replayed webhooks; operators' alerts reach a listening
alert webhook; a console refund's own `charge.refunded` is not reported twice.

The sandbox's Stripe dashboard page makes the refunds and disputes and records Stripe's events;
the tests deliver them to the portal (signed, over HTTP) when they choose, and run the worker."""

from __future__ import annotations

import json
import re
import threading

import pytest
import requests
from sqlalchemy import update
from werkzeug.serving import make_server

from portal import refunds
from portal.admin import figures, operations
from portal.admin.audit import Actor
from portal.db import db
from portal.jobs import Worker
from portal.models import Job, JobState, OrderState, utcnow
from portal.money import to_decimal
from portal.orders import find as find_order
from portal.orders import refresh as reload
from portal.sandbox import stripe_api
from tests.admin_support import buy_in_sandbox
from tests.conftest import free_port
from tests.test_cleeng_sandbox import pay, subscribe


class AlertListener:
    """A chat tool's incoming webhook on loopback: keeps every JSON body POSTed to it."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.url = f"http://127.0.0.1:{free_port()}/hook"
        port = int(self.url.split(":")[2].split("/")[0])
        self.server = make_server("127.0.0.1", port, self._app, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _app(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        self.bodies.append(json.loads(environ["wsgi.input"].read(length)))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [b'{"ok": true}']

    def kinds(self) -> list[str]:
        return [body["kind"] for body in self.bodies]

    def stop(self):
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def listener():
    hook = AlertListener()
    yield hook
    hook.stop()


@pytest.fixture
def server(sandbox_server, listener):
    """The sandbox portal; Stripe's events are recorded, and delivered by `deliver_events`."""
    # A failed job waits before its next try (a worker run does not use up every attempt).
    portal = sandbox_server(ALERT_WEBHOOK_URL=listener.url, RETRY_BASE_SECONDS="60")
    portal.delivered = set()
    yield portal
    db.engine.dispose()


def deliver_events(server) -> dict[str, str]:
    """Deliver, signed, every Stripe event recorded and not delivered yet; returns the portal's
    outcome for each event type delivered."""
    secret = server.services.settings.stripe_webhook_secret[0]
    outcomes = {}
    for event in reversed(server.store.list("event")):
        if event["id"] in server.delivered:
            continue
        outcomes[event["type"]] = send(server, event, secret)
        server.delivered.add(event["id"])
    return outcomes


def send(server, event: dict, secret: str | None = None) -> str:
    secret = secret or server.services.settings.stripe_webhook_secret[0]
    payload = json.dumps(event)
    response = requests.post(
        f"{server.url}/webhooks/stripe",
        data=payload,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": stripe_api.sign(payload, secret),
        },
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json().get("outcome", "duplicate")


def run_worker(server) -> dict:
    """The worker, once; every queued job is made due first (its back-off is skipped)."""
    with db.transaction() as session:
        session.execute(update(Job).where(Job.state == JobState.QUEUED).values(run_at=utcnow()))
    return Worker(server.services, poll_seconds=0).run(once=True)


def charge_of(server, order) -> dict:
    intent = server.store.get("payment_intent", order.stripe_payment_intent_id)
    return server.store.get("charge", intent["latest_charge"])


def dashboard(server, path: str, **form) -> str:
    """Press a button on the sandbox Stripe dashboard; returns its notice."""
    response = requests.post(
        f"{server.url}/sandbox/stripe/dashboard/{path}",
        data=form,
        allow_redirects=False,
        timeout=30,
    )
    assert response.status_code == 303, response.text
    page = requests.get(f"{server.url}{response.headers['Location']}", timeout=30)
    assert page.status_code == 200
    return re.search(r'<p class="notice" role="status">([^<]*)</p>', page.text).group(1)


def skilljar_puts(server, purchase_id: str, status: int | None = 200) -> list[dict]:
    return [
        json.loads(c["body"])
        for c in server.store.calls("skilljar")
        if c["method"] == "PUT"
        and c["path"] == f"/sandbox/skilljar/v1/purchases/{purchase_id}"
        and (status is None or c["status"] == status)
    ]


def decimal_text(order, minor: int) -> str:
    return str(to_decimal(minor, order.currency))


# --- Skilljar ----------------------------------------------------------------------------------


def test_skilljar_dashboard_refunds_partial_then_full_reach_skilljar_once_under_faults(server):
    purchase_id = buy_in_sandbox(server.url, quantity=2)
    order = find_order("skilljar", purchase_id)
    assert order.state == OrderState.FULFILLED
    paid = order.amount_paid_minor
    half = paid // 2
    charge = charge_of(server, order)

    server.control(skilljar_fault_rate=1)
    notice = dashboard(server, f"charges/{charge['id']}/refund", amount=decimal_text(order, half))
    assert notice.startswith("Refunded")
    assert deliver_events(server)["charge.refunded"] == f"order {OrderState.PARTIALLY_REFUNDED}"
    order = reload(order)
    assert (order.state, order.amount_refunded_minor) == (OrderState.PARTIALLY_REFUNDED, half)
    run_worker(server)  # Skilljar is down: the job waits for its next try
    assert skilljar_puts(server, purchase_id) == []
    assert skilljar_puts(server, purchase_id, 503)

    server.control(skilljar_fault_rate=0)
    run_worker(server)
    purchase = server.store.get("skilljar.purchase", purchase_id)
    # A partial refund: refund_cents only; the purchase stays SUCCESS (the learner keeps it).
    assert (purchase["state"], purchase["refund_cents"]) == ("SUCCESS", half)
    assert skilljar_puts(server, purchase_id) == [{"refund_cents": half}]

    # Stripe delivers the same news again (a replay, and a fresh event for the same refund).
    (refunded_event,) = [e for e in server.store.list("event") if e["type"] == "charge.refunded"]
    assert send(server, refunded_event) == "duplicate"
    again = stripe_api.build_event("charge.refunded", charge_of(server, order))
    assert send(server, again).startswith("no change")
    run_worker(server)
    assert len(skilljar_puts(server, purchase_id)) == 1

    # The rest, refunded in the dashboard: a full refund now.
    dashboard(server, f"charges/{charge['id']}/refund", amount="")
    assert deliver_events(server)["charge.refunded"] == f"order {OrderState.REFUNDED}"
    run_worker(server)
    purchase = server.store.get("skilljar.purchase", purchase_id)
    assert (purchase["state"], purchase["refund_cents"]) == ("REFUNDED", paid)
    assert purchase["refunded_at"].endswith("Z")
    puts = skilljar_puts(server, purchase_id)
    assert len(puts) == 2
    assert puts[-1]["state"] == "REFUNDED"
    assert [(r.amount_minor, r.source) for r in refunds.for_order(order.id)] == [
        (half, "stripe"),
        (paid - half, "stripe"),
    ]


def test_a_console_refund_and_its_own_webhook_reach_skilljar_once(server):
    purchase_id = buy_in_sandbox(server.url)
    order = find_order("skilljar", purchase_id)
    actor = Actor(None, "ops@example.com")
    result = operations.refund(
        server.services, actor, order.reference, order.amount_paid_minor, "asked for it"
    )
    assert result.ok, result.message
    assert "Skilljar was told" in result.message
    # Stripe's charge.refunded for that same refund arrives afterwards: nothing new.
    assert deliver_events(server)["charge.refunded"].startswith("no change")
    run_worker(server)
    puts = skilljar_puts(server, purchase_id)
    assert len(puts) == 1
    assert puts[0]["state"] == "REFUNDED"
    assert [r.source for r in refunds.for_order(order.id)] == ["console"]


def test_the_refund_form_says_what_a_partial_refund_does_before_it_is_confirmed(server):
    from tests.admin_support import make_user, sign_in

    purchase_id = buy_in_sandbox(server.url, quantity=2)
    order = find_order("skilljar", purchase_id)
    with server.app.app_context():
        make_user("ops@example.com", "operator")
    client = server.app.test_client()
    assert sign_in(client, "ops@example.com").status_code == 303
    page = client.get(f"/admin/orders/{order.reference}/refund")
    assert page.status_code == 200
    text = page.text
    assert "Refund less (a partial refund):" in text
    assert "the purchase stays SUCCESS and the learner keeps the course" in text
    assert "the purchase becomes REFUNDED" in text
    assert text.index("Refund less") < text.index('name="confirm"')


def test_a_dispute_opened_then_lost_flags_then_refunds_the_purchase_and_alerts(server, listener):
    purchase_id = buy_in_sandbox(server.url)
    order = find_order("skilljar", purchase_id)
    charge = charge_of(server, order)

    assert dashboard(server, f"charges/{charge['id']}/dispute").startswith("Dispute dp_")
    assert deliver_events(server)["charge.dispute.created"] == "dispute recorded"
    run_worker(server)
    order = reload(order)
    assert order.disputed is True
    assert server.store.get("skilljar.purchase", purchase_id)["state"] == "FLAGGED"
    assert listener.kinds() == ["dispute_opened"]
    assert listener.bodies[0]["order"] == order.reference
    board = figures.dashboard()
    assert [o.reference for _event, o in board.money_alerts] == [order.reference]

    (dispute,) = server.store.list("dispute")
    assert dashboard(server, f"disputes/{dispute['id']}/close", outcome="lost").endswith("lost.")
    assert deliver_events(server)["charge.dispute.closed"] == "dispute lost"
    run_worker(server)
    order = reload(order)
    # A lost dispute counts as a full refund, in the portal and on Skilljar.
    assert (order.state, order.amount_refunded_minor) == (
        OrderState.REFUNDED,
        order.amount_paid_minor,
    )
    assert order.disputed is False
    purchase = server.store.get("skilljar.purchase", purchase_id)
    assert (purchase["state"], purchase["refund_cents"]) == ("REFUNDED", order.amount_paid_minor)
    assert listener.kinds() == ["dispute_opened", "dispute_lost"]
    # The same closing again changes nothing and reports nothing.
    closed = next(e for e in server.store.list("event") if e["type"] == "charge.dispute.closed")
    again = stripe_api.build_event("charge.dispute.closed", closed["data"]["object"])
    assert send(server, again).startswith("dispute already closed")
    run_worker(server)
    assert len(skilljar_puts(server, purchase_id)) == 2  # FLAGGED, then REFUNDED
    assert listener.kinds() == ["dispute_opened", "dispute_lost"]


def test_a_dispute_won_puts_the_purchase_back_to_success(server, listener):
    purchase_id = buy_in_sandbox(server.url)
    order = find_order("skilljar", purchase_id)
    dashboard(server, f"charges/{charge_of(server, order)['id']}/dispute")
    deliver_events(server)
    run_worker(server)
    (dispute,) = server.store.list("dispute")
    dashboard(server, f"disputes/{dispute['id']}/close", outcome="won")
    assert deliver_events(server)["charge.dispute.closed"] == "dispute won"
    run_worker(server)
    assert server.store.get("skilljar.purchase", purchase_id)["state"] == "SUCCESS"
    order = reload(order)
    assert (order.state, order.disputed) == (OrderState.FULFILLED, False)
    assert listener.kinds() == ["dispute_opened"]


def test_a_refund_skilljar_never_takes_alerts_the_operator(server, listener):
    purchase_id = buy_in_sandbox(server.url)
    order = find_order("skilljar", purchase_id)
    server.control(skilljar_fault_rate=1)
    dashboard(server, f"charges/{charge_of(server, order)['id']}/refund", amount="")
    deliver_events(server)
    for _ in range(6):  # RETRY_MAX_ATTEMPTS=4 in the sandbox tests
        run_worker(server)
    assert listener.kinds() == ["refund_not_taken"]
    assert "Skilljar was not told of the refund" in listener.bodies[0]["text"]


def test_an_amount_mismatch_alerts_the_operator(server, listener):
    from portal import checkout
    from portal.checkout import OrderDraft

    order = checkout.open_order(
        OrderDraft(
            platform="skilljar",
            platform_ref="mismatch1",
            description="Course",
            currency="USD",
            amount_minor=5000,
        )
    )
    stripe_session = {
        "id": "cs_mismatch",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 4000,
        "currency": "usd",
        "payment_intent": "pi_mismatch",
        "total_details": {"amount_tax": 0},
    }
    assert checkout.record_payment(server.services, order, stripe_session, source="test")
    run_worker(server)
    assert "amount_mismatch" in listener.kinds()
    body = listener.bodies[listener.kinds().index("amount_mismatch")]
    assert body["detail"] == {
        "alert": "amount_mismatch",
        "charged": 4000,
        "expected": 5000,
        "currency": "USD",
    }


# --- Cleeng ------------------------------------------------------------------------------------


def cleeng_patches(server, payment_id, status: int | None = 200) -> list[dict]:
    return [
        json.loads(c["body"])
        for c in server.store.calls("cleeng")
        if c["method"] == "PATCH"
        and c["path"] == f"/sandbox/cleeng/3.1/payments/{payment_id}"
        and (status is None or c["status"] == status)
    ]


def test_cleeng_dashboard_refund_is_reported_once_under_faults(server):
    server.control(webhook_delay_seconds=-1)
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    pay(server, browser, review)
    (payment,) = server.store.list("cleeng.payment")
    order = find_order("cleeng", str(payment["orderId"]))
    charge = charge_of(server, order)

    server.control(cleeng_fault_rate=1)
    dashboard(server, f"charges/{charge['id']}/refund", amount="5.00")
    deliver_events(server)
    run_worker(server)
    assert cleeng_patches(server, payment["id"]) == []
    server.control(cleeng_fault_rate=0)
    run_worker(server)
    again = stripe_api.build_event("charge.refunded", charge_of(server, order))
    assert send(server, again).startswith("no change")
    run_worker(server)
    (patch,) = cleeng_patches(server, payment["id"])
    assert (patch["status"], patch["amount"], patch["refundType"]) == ("refunded", 5.0, "refund")
    assert reload(order).state == OrderState.PARTIALLY_REFUNDED

    # The rest, in full, while Cleeng is down again.
    server.control(cleeng_fault_rate=1)
    dashboard(server, f"charges/{charge['id']}/refund", amount="")
    assert deliver_events(server)["charge.refunded"] == f"order {OrderState.REFUNDED}"
    run_worker(server)
    server.control(cleeng_fault_rate=0)
    run_worker(server)
    run_worker(server)
    patches = cleeng_patches(server, payment["id"])
    assert [p["amount"] for p in patches] == [5.0, 7.1]
    assert server.store.get("cleeng.payment", str(payment["id"]))["status"] == "refunded"


def test_a_refund_cleeng_asked_for_is_not_reported_back_to_it(server):
    browser = requests.Session()
    review = subscribe(server, browser, "S100000001_NL")
    pay(server, browser, review)
    (payment,) = server.store.list("cleeng.payment")
    order = find_order("cleeng", str(payment["orderId"]))
    browser.post(f"{server.url}/sandbox/cleeng/payments/{payment['id']}/refund")
    run_worker(server)
    assert deliver_events(server)["charge.refunded"] == f"order {OrderState.REFUNDED}"
    run_worker(server)
    assert len(cleeng_patches(server, payment["id"])) == 1
    assert [r.source for r in refunds.for_order(order.id)] == ["stripe"]


# --- merchants ---------------------------------------------------------------------------------

CARD = {
    "email": "buyer@example.com",
    "card_number": "4242424242424242",
    "expiry": "12/40",
    "cvc": "123",
    "name": "Ada Lovelace",
}


def merchant_order(server, browser) -> str:
    send_form = browser.post(
        f"{server.url}/sandbox/merchant/send",
        data={
            "email": "buyer@example.com",
            "item": "Seat licence",
            "unit_price": "49.00",
            "quantity": "2",
            "currency": "USD",
            "mode": "redirect",
            "reference": "SO-26",
        },
        allow_redirects=False,
    )
    assert send_form.status_code == 303, send_form.text
    return send_form.headers["Location"]


def merchant_pays(server, browser) -> str:
    review_url = merchant_order(server, browser)
    review = browser.get(review_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(f"{review_url}/pay", data={"csrf_token": token}, allow_redirects=False)
    paid = browser.post(to_stripe.headers["Location"], data=CARD, allow_redirects=False)
    assert paid.status_code == 303
    browser.get(paid.headers["Location"])
    return review_url.rsplit("/", 1)[1]


def merchant_events(server) -> list[dict]:
    from tests.api_support import run_queued

    run_queued(server.app, "webhook_delivery")
    return server.store.list("merchant_webhook")


def received_types(server) -> list[str]:
    return sorted(w["type"] for w in merchant_events(server))


def test_merchant_hears_of_dashboard_refunds_and_a_lost_dispute_once(server):
    browser = requests.Session()
    reference = merchant_pays(server, browser)
    order = reload_by_reference(reference)
    charge = charge_of(server, order)
    assert received_types(server) == ["order.paid"]

    dashboard(server, f"charges/{charge['id']}/refund", amount="10.00")
    deliver_events(server)
    run_worker(server)
    again = stripe_api.build_event("charge.refunded", charge_of(server, order))
    assert send(server, again).startswith("no change")
    run_worker(server)
    assert received_types(server) == ["order.paid", "order.refunded"]

    dashboard(server, f"charges/{charge['id']}/dispute")
    deliver_events(server)
    run_worker(server)
    (dispute,) = server.store.list("dispute")
    dashboard(server, f"disputes/{dispute['id']}/close", outcome="lost")
    deliver_events(server)
    run_worker(server)
    types = received_types(server)
    assert types == [
        "order.dispute_closed",
        "order.disputed",
        "order.paid",
        "order.refunded",
        "order.refunded",
    ]
    bodies = {w["type"]: w for w in merchant_events(server)}
    closed = bodies["order.dispute_closed"]
    assert closed["detail"]["dispute"]["outcome"] == "lost"
    api = {"Authorization": f"Bearer {server.store.get('merchant_key', 'demo')['secret']}"}
    shown = requests.get(f"{server.url}/api/v1/orders/{reference}", headers=api, timeout=10)
    assert shown.json()["status"] == "refunded"
    assert shown.json()["amount_refunded"] == 9800


def reload_by_reference(reference: str):
    from tests.api_support import order_row

    return order_row(reference)


def test_back_on_stripe_takes_a_merchant_customer_straight_to_the_cancel_url(server):
    browser = requests.Session()
    review_url = merchant_order(server, browser)
    review = browser.get(review_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(f"{review_url}/pay", data={"csrf_token": token}, allow_redirects=False)
    session = server.store.list("checkout.session")[0]
    assert to_stripe.headers["Location"].startswith(f"{server.url}/sandbox/stripe/pay/")
    back = browser.get(session["cancel_url"], allow_redirects=False)
    assert back.status_code == 303
    order = reload_by_reference(review_url.rsplit("/", 1)[1])
    assert back.headers["Location"] == order.platform_data["cancel_url"]
    assert order.state == OrderState.CANCELLED
    assert received_types(server) == ["order.cancelled"]
