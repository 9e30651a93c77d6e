"""A state change and the timeline events that tell of it are written together, in one
transaction on either database (`portal.orders.move`, `portal.orders.create`): the events read
in the order they happened, an event that depends on the change is written only if the change
is, and nothing is written half."""

from __future__ import annotations

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from portal import orders
from portal.checkout import OrderDraft, open_order
from portal.db import db
from portal.http import CallRecord
from portal.models import Order, OrderEvent, OrderState
from portal.orders import timeline
from tests.admin_support import make_order

CALL = CallRecord("POST", "https://api.stripe.test/v1/checkout/sessions", 200, 41)


def events_of(order_id: int) -> list[tuple[str, str, dict, int | None]]:
    columns = (OrderEvent.kind, OrderEvent.message, OrderEvent.detail, OrderEvent.duration_ms)
    with db.reader() as session:
        rows = session.execute(
            select(*columns).where(OrderEvent.order_id == order_id).order_by(OrderEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def state_of(order_id: int) -> str:
    with db.reader() as session:
        return session.scalar(select(Order.state).where(Order.id == order_id))


def only_new(order_id: int, before: list) -> list:
    return events_of(order_id)[len(before) :]


def draft(ref: str = "p-one-statement") -> OrderDraft:
    return OrderDraft(
        platform="skilljar",
        platform_ref=ref,
        description="Introduction to Python",
        currency="usd",
        amount_minor=7840,
        sku="PY-101",
        customer_email="learner@example.com",
        redirect_url="https://academy.test/thanks",
    )


def to_paying(order: Order, **values) -> bool:
    """Pay's compare-and-set, open -> paying, with the create call that led to it, committed on
    its own."""
    moved = orders.move(order, "pay", before=[timeline.call_event(order.id, CALL)], **values)
    return moved is not None


def test_a_won_transition_writes_the_call_then_the_state_change(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    earlier = events_of(order.id)
    assert to_paying(
        order,
        stripe_session_id="cs_test_one",
        stripe_session_url="https://checkout.stripe.test/c/pay/cs_test_one",
    )
    assert only_new(order.id, earlier) == [
        (
            "http",
            "POST https://api.stripe.test/v1/checkout/sessions -> 200",
            {"method": "POST", "url": CALL.url, "status": 200, "error": None},
            41,
        ),
        ("state", "-> paying", {"from": ["open"], "to": "paying"}, None),
    ]
    with db.reader() as session:
        row = session.get(Order, order.id)
    assert (row.state, row.stripe_session_id) == (OrderState.PAYING, "cs_test_one")
    assert row.stripe_session_url == "https://checkout.stripe.test/c/pay/cs_test_one"
    assert row.updated_at > order.updated_at


def test_a_lost_transition_keeps_the_call_but_changes_nothing(app):
    order = make_order(state=OrderState.CANCELLED, stripe_session_id=None)
    earlier = events_of(order.id)
    assert to_paying(order, stripe_session_id="cs_test_lost") is False
    assert [kind for kind, *_ in only_new(order.id, earlier)] == ["http"]
    assert state_of(order.id) == OrderState.CANCELLED


def test_the_same_shape_of_transition_twice_uses_each_calls_own_values(app):
    first = make_order(state=OrderState.OPEN, stripe_session_id=None, platform_ref="p-first")
    second = make_order(state=OrderState.OPEN, stripe_session_id=None, platform_ref="p-second")
    for order, session_id in ((first, "cs_first"), (second, "cs_second")):
        with db.transaction() as session:  # an ORM session works too
            assert orders.move(order, "pay", session=session, stripe_session_id=session_id)
    with db.reader() as session:
        ids = {o.platform_ref: o.stripe_session_id for o in session.scalars(select(Order))}
    assert ids == {"p-first": "cs_first", "p-second": "cs_second"}
    assert [kind for kind, *_ in events_of(second.id)][-1] == "state"


def test_an_extra_condition_decides_the_transition(app):
    order = make_order(state=OrderState.PAYING, stripe_session_id="cs_now")
    for session_id, expected in (("cs_old", False), ("cs_now", True)):
        with db.transaction() as session:
            won = orders.move(
                order,
                "session_expired",
                session=session,
                where=Order.stripe_session_id == session_id,
            )
        assert (won is not None) is expected
    assert state_of(order.id) == OrderState.EXPIRED
    assert [message for _, message, *_ in events_of(order.id)].count("-> expired") == 1


def test_a_transition_that_fails_writes_none_of_its_events(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    earlier = events_of(order.id)
    with pytest.raises(IntegrityError):
        to_paying(order, reference=None)  # NOT NULL: the whole write fails
    assert only_new(order.id, earlier) == []
    assert state_of(order.id) == OrderState.OPEN


def test_a_won_move_answers_the_order_as_it_left_it(app):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    moved = orders.move(order, "pay", stripe_session_id="cs_test_answer")
    assert (moved.id, moved.state, moved.stripe_session_id) == (
        order.id,
        OrderState.PAYING,
        "cs_test_answer",
    )


def test_a_new_order_comes_with_its_first_event(app):
    order = open_order(draft(), existing=None)
    with db.reader() as session:
        stored = session.get(Order, order.id)
    assert (stored.reference, stored.state, stored.amount_minor) == (
        order.reference,
        OrderState.OPEN,
        7840,
    )
    assert (order.id, order.currency, order.session_attempt) == (stored.id, "USD", 0)
    assert events_of(order.id) == [("state", "order opened", {"to": "open"}, None)]


def test_a_second_order_for_the_same_purchase_writes_nothing(app, monkeypatch):
    first = open_order(draft("p-twice"), existing=None)
    with db.reader() as session:
        events_before = session.scalar(text("SELECT count(*) FROM order_events"))
    # As if two first visits raced: the second INSERT meets the unique constraint.
    monkeypatch.setattr(orders, "find", lambda platform, ref: None)
    with pytest.raises(IntegrityError):
        orders.create(
            {
                "platform": "skilljar",
                "platform_ref": "p-twice",
                "description": "again",
                "currency": "USD",
                "amount_minor": 1,
            }
        )
    with db.reader() as session:
        assert session.scalar(text("SELECT count(*) FROM order_events")) == events_before
        assert session.scalar(text("SELECT count(*) FROM orders")) == 1
    assert events_of(first.id) == [("state", "order opened", {"to": "open"}, None)]
