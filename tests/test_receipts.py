"""Receipts and notices (issue 26): per platform source, who sends the receipt
(`PORTAL_<PLATFORM>_RECEIPTS`: portal, stripe, platform, none); the review page promises a
receipt only when one will be sent; the portal's branded emails (in the learner's language,
through the template system, from the job queue) for the receipt, a refund, a delayed payment
that failed and a cancelled pay link."""

from __future__ import annotations

import re
from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import select, update

from portal import mail, orders
from portal.api import cancel as api_orders
from portal.config import ConfigError
from portal.db import db
from portal.models import ApiKey, Job, Order, utcnow
from portal.orders import find as find_order
from portal.orders import refresh as reload
from tests.admin_support import buy_in_sandbox
from tests.api_support import ApiClient, make_key, order_row, run_queued, session_body
from tests.conftest import SKILLJAR_BASE, STRIPE_BASE
from tests.test_money_events import charge_of, dashboard, deliver_events, run_worker

PURCHASE_URL = f"{SKILLJAR_BASE}/v1/purchases/p1abc"


def mail_jobs(template: str | None = None) -> list[Job]:
    with db.reader() as session:
        jobs = session.scalars(select(Job).where(Job.kind == "mail").order_by(Job.id)).all()
    return [j for j in jobs if template is None or j.payload["template"] == template]


def rendered(app, job: Job) -> tuple[str, str, str]:
    """The message a queued mail job sends (as the worker renders it)."""
    order = reload(Order(id=job.order_id))
    settings = app.config["PORTAL"]
    with db.reader() as session:
        key = session.get(ApiKey, order.merchant_key_id) if order.merchant_key_id else None
    with app.app_context():
        brand = mail.brand_of(order, settings, key)
        notice = job.payload.get("notice")
        return mail.render(settings, job.payload["template"], order, brand, notice)


# --- who sends the receipt, and what the review page promises ---------------------------------


def review_page(make_app, mocked, purchase, **settings):
    app = make_app(**settings)
    mocked.get(PURCHASE_URL, json=purchase())
    return app, app.test_client().get("/skilljar/checkout?purchase_id=p1abc")


@pytest.mark.parametrize(
    ("settings", "promise"),
    [
        ({"SMTP_URL": "smtp://127.0.0.1:2525"}, "Your receipt will be sent to"),
        ({"SKILLJAR_RECEIPTS": "stripe"}, "Your receipt will be sent to"),
        ({"SKILLJAR_RECEIPTS": "platform"}, "Secure checkout will send your receipt."),
        ({"SKILLJAR_RECEIPTS": "none", "SMTP_URL": "smtp://127.0.0.1:2525"}, None),
        ({}, None),  # the portal sends receipts, but has no mail to send them with
    ],
)
def test_the_review_page_promises_a_receipt_only_when_one_will_be_sent(
    make_app, mocked, purchase, settings, promise
):
    _app, page = review_page(make_app, mocked, purchase, **settings)
    assert page.status_code == 200
    if promise is None:
        assert "receipt" not in page.text
    else:
        assert promise in page.text


def test_stripe_as_the_sender_gets_the_receipt_email(make_app, mocked, purchase, checkout_session):
    app = make_app(SKILLJAR_RECEIPTS="stripe")
    mocked.get(PURCHASE_URL, json=purchase())
    client = app.test_client()
    page = client.get("/skilljar/checkout?purchase_id=p1abc")
    order = find_order("skilljar", "p1abc")
    mocked.post(
        f"{STRIPE_BASE}/v1/checkout/sessions",
        json=checkout_session(client_reference_id=order.reference),
    )
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    client.post(f"/orders/{order.reference}/pay", data={"csrf_token": token})
    (create,) = [c for c in mocked.calls if c.request.url.endswith("/v1/checkout/sessions")]
    sent = dict(parse_qsl(create.request.body))
    assert sent["payment_intent_data[receipt_email]"] == "learner@example.com"


def test_a_receipt_sender_that_is_not_one_of_the_choices_stops_the_app(make_app):
    with pytest.raises(ConfigError, match="PORTAL_CLEENG_RECEIPTS"):
        make_app(CLEENG_RECEIPTS="someone")


# --- the portal's emails, against the stand-ins ------------------------------------------------


@pytest.fixture
def server(sandbox_server, listener):
    portal = sandbox_server(ALERT_WEBHOOK_URL=listener.url, RETRY_BASE_SECONDS="60")
    portal.delivered = set()
    yield portal
    db.engine.dispose()


@pytest.fixture
def listener():
    from tests.test_money_events import AlertListener

    hook = AlertListener()
    yield hook
    hook.stop()


def caught(server, subject_part: str) -> list[dict]:
    return [m for m in server.store.list("mail") if subject_part in m["subject"]]


def test_a_skilljar_learner_gets_a_receipt_then_refund_emails_in_their_language(server):
    purchase_id = buy_in_sandbox(server.url, quantity=2)
    order = find_order("skilljar", purchase_id)
    run_worker(server)
    (receipt,) = caught(server, "receipt for your order")
    assert receipt["to"] == "ada@example.com"
    assert "Charged: $98.00" in receipt["text"]

    with db.transaction() as session:
        session.execute(update(Order).where(Order.id == order.id).values(locale="fr"))
    dashboard(server, f"charges/{charge_of(server, order)['id']}/refund", amount="20.00")
    deliver_events(server)
    run_worker(server)
    (partial,) = caught(server, "votre remboursement")
    assert "a remboursé 20,00" in partial["text"]
    assert "Vous conservez votre accès à Introduction to Python." in partial["text"]
    assert "Remboursé à ce jour : 20,00" in partial["text"]
    assert "a remboursé 20,00" in partial["html"]

    dashboard(server, f"charges/{charge_of(server, order)['id']}/refund", amount="")
    deliver_events(server)
    run_worker(server)
    run_worker(server)
    full = [m for m in caught(server, "votre remboursement") if m["id"] != partial["id"]]
    assert len(full) == 1
    assert "a remboursé 78,00" in full[0]["text"]
    assert "Votre commande est désormais entièrement remboursée." in full[0]["text"]
    assert "prend fin avec ce remboursement" in full[0]["text"]


def test_with_the_platform_as_sender_the_portal_sends_nothing(sandbox_server):
    server = sandbox_server(SKILLJAR_RECEIPTS="platform")
    server.delivered = set()
    purchase_id = buy_in_sandbox(server.url)
    order = find_order("skilljar", purchase_id)
    dashboard(server, f"charges/{charge_of(server, order)['id']}/refund", amount="")
    deliver_events(server)
    run_worker(server)
    assert server.store.list("mail") == []
    db.engine.dispose()


# --- notices about merchant orders (queued, rendered) ------------------------------------------


@pytest.fixture
def app(make_app):
    return make_app(SMTP_URL="smtp://127.0.0.1:2525")


@pytest.fixture
def api(app):
    return ApiClient(app.test_client(), make_key().secret)


def test_a_failed_delayed_payment_queues_its_email(app, api, mocked):
    from portal import checkout

    order = api.post("/checkout-sessions", session_body()).json["order"]
    row = order_row(order["id"])
    with db.transaction() as session:
        orders.move(row, "complete_unpaid", session=session, stripe_session_id="cs_1")
    checkout.payment_failed(
        app.extensions["portal"],
        {"id": "cs_1", "client_reference_id": order["id"]},
        "The payment did not go through.",
    )
    run_queued(app, "payment_failed")
    (job,) = mail_jobs("payment_failed")
    assert job.payload["to"] == "buyer@example.com"
    subject, text, html = rendered(app, job)
    assert subject == "Acme Supplies: your payment did not go through"
    assert "Your payment of $2,210.00 to Acme Supplies did not go through" in text
    assert "No money was taken." in html


def test_a_pay_link_that_runs_out_tells_the_customer(app, api, mocked):
    order = api.post("/checkout-sessions", session_body(mode="link")).json["order"]
    with db.transaction() as session:
        session.execute(
            update(Order)
            .where(Order.reference == order["id"])
            .values(created_at=utcnow() - timedelta(days=8))
        )
    api_orders.run_expiry(app.extensions["portal"], None)
    run_queued(app, "cancel")
    (job,) = mail_jobs("pay_link_cancelled")
    assert job.payload["notice"]["expired"] is True
    subject, text, _html = rendered(app, job)
    assert subject == "Acme Supplies: your pay link can no longer be used"
    assert "The pay link Acme Supplies sent you has expired" in text
    assert "Your reference SO-1001" in text


def test_a_cancelled_pay_link_tells_the_customer(app, api, mocked):
    order = api.post("/checkout-sessions", session_body(mode="link")).json["order"]
    assert api.post(f"/orders/{order['id']}/cancel", {}).status_code == 200
    (job,) = mail_jobs("pay_link_cancelled")
    subject, text, _html = rendered(app, job)
    assert "Acme Supplies has cancelled the pay link it sent you" in text
    # A redirect-mode order (no link was sent) gets no such email.
    other = api.post("/checkout-sessions", session_body()).json["order"]
    api.post(f"/orders/{other['id']}/cancel", {})
    assert len(mail_jobs("pay_link_cancelled")) == 1


def test_the_receipt_setting_also_governs_merchant_receipts(make_app, mocked):
    from tests.api_support import authorise

    app = make_app(SMTP_URL="smtp://127.0.0.1:2525", MERCHANT_RECEIPTS="stripe")
    api = ApiClient(app.test_client(), make_key().secret)
    order = api.post("/checkout-sessions", session_body()).json["order"]
    authorise(app, mocked, order["id"], manual=False, stripe_base=STRIPE_BASE)
    assert mail_jobs("receipt") == []
