"""Helpers for the operator console tests: users, signing in, orders in any state, and what
the database recorded. The fixtures are in tests/admin_fixtures.py."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from portal.admin import operations
from portal.admin.audit import Actor
from portal.db import db
from portal.models import AuditEntry, Job, JobState, Order, OrderEvent, OrderState, utcnow

PASSWORD = "correct horse battery staple"


def csrf(html: str) -> str:
    match = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', html)
    if match is None:
        match = re.search(r'name="[^"]*csrf_token"[^>]*value="([^"]+)"', html)
    return match.group(1)


def make_user(email: str, role: str, password: str | None = PASSWORD):
    return operations.create_user(Actor.command_line("test"), email, role, password)


def sign_in(client, email: str, password: str = PASSWORD, **environ):
    page = client.get("/admin/login")
    return client.post(
        "/admin/login",
        data={"csrf_token": csrf(page.text), "email": email, "password": password},
        environ_base=environ,
    )


def make_order(**fields) -> Order:
    """An order row as the checkout core would have left it; paid states get a payment."""
    state = fields.pop("state", OrderState.FULFILLED)
    now = utcnow()
    values = {
        "platform": "skilljar",
        "platform_ref": "p1abc",
        "description": "Introduction to Python",
        "sku": "PY-101",
        "quantity": 2,
        "currency": "USD",
        "amount_minor": 7840,
        "list_unit_minor": 4900,
        "promo_code": "LAUNCH20",
        "customer_email": "learner@example.com",
        "customer_name": "Grace Hopper",
        "platform_data": {"purchase_id": "p1abc", "offer_id": "off1", "user_id": "u1"},
        "redirect_url": "https://academy.test/thanks",
        "stripe_session_id": "cs_test_1",
        "created_at": now - timedelta(minutes=30),
    }
    if state in {
        OrderState.PAID,
        OrderState.FULFILLED,
        OrderState.FULFIL_FAILED,
        OrderState.REFUNDED,
        OrderState.PARTIALLY_REFUNDED,
    }:
        values.update(
            stripe_payment_intent_id="pi_test_1",
            amount_paid_minor=7840,
            tax_paid_minor=0,
            paid_at=now - timedelta(minutes=20),
        )
    if state in {OrderState.FULFILLED, OrderState.PARTIALLY_REFUNDED, OrderState.REFUNDED}:
        values["fulfilled_at"] = now - timedelta(minutes=19)
    values.update(fields)
    with db.transaction() as session:
        order = Order(state=state, **values)
        session.add(order)
        session.flush()
        session.add(
            OrderEvent(
                order_id=order.id, kind="state", message="order opened", detail={"to": "open"}
            )
        )
    return order


def add_fulfil_job(order: Order, state: str = JobState.DEAD, **fields) -> None:
    values = {
        "kind": "fulfil",
        "dedupe_key": f"fulfil:{order.id}",
        "order_id": order.id,
        "state": state,
        "attempts": 3,
        "last_error": "Skilljar fulfil: HTTP 503",
    }
    values.update(fields)
    with db.transaction() as session:
        session.add(Job(**values))


def reload(order: Order) -> Order:
    with db.reader() as session:
        return session.get(Order, order.id)


def events(order: Order, kind: str | None = None) -> list[OrderEvent]:
    with db.reader() as session:
        query = select(OrderEvent).where(OrderEvent.order_id == order.id)
        if kind:
            query = query.where(OrderEvent.kind == kind)
        return list(session.scalars(query.order_by(OrderEvent.id)))


def audit_entries(action: str | None = None) -> list[AuditEntry]:
    with db.reader() as session:
        query = select(AuditEntry)
        if action:
            query = query.where(AuditEntry.action == action)
        return list(session.scalars(query.order_by(AuditEntry.id)))


def buy_in_sandbox(base: str, offer: str = "intro-python", quantity: int = 1) -> str:
    """A learner's whole purchase through the sandbox academy and Stripe stand-in, over HTTP;
    returns the Skilljar purchase id."""
    import requests

    browser = requests.Session()
    review = browser.post(
        f"{base}/sandbox/skilljar/academy/checkout",
        data={"offer": offer, "quantity": str(quantity), "promo_code": ""},
        timeout=30,
    )
    assert review.status_code == 200, review.text
    purchase_id = review.url.split("purchase_id=")[1]
    action = re.search(r'action="([^"]*/pay)"', review.text).group(1)
    stripe_page = browser.post(
        action if action.startswith("http") else base + action,
        data={"csrf_token": csrf(review.text)},
        timeout=30,
    )
    assert "/sandbox/stripe/pay/" in stripe_page.url
    thanks = browser.post(
        stripe_page.url,
        data={
            "email": "ada@example.com",
            "card_number": "4242 4242 4242 4242",
            "expiry": "12/30",
            "cvc": "123",
            "name": "Ada Lovelace",
        },
        timeout=30,
    )
    assert "/thank-you/" in thanks.url, thanks.text
    return purchase_id
