"""The order state machine is declared once (`portal.orders.states.MOVES`) and the store's
compare-and-set enforces it: every listed move works from each of its start states, on both
databases; every unlisted one is refused and changes nothing. The diagram in
docs/architecture.md is the table's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from portal import orders
from portal.db import db
from portal.models import PAID_STATES, Order, OrderEvent, OrderState
from portal.orders.states import LEARNER_ORDER_STATES, MOVES, REFUNDABLE, next_state
from tests.admin_support import make_order

ROOT = Path(__file__).resolve().parent.parent


def row_and_events(order: Order) -> tuple[dict, int]:
    with db.reader() as session:
        row = session.execute(select(*Order.__table__.c).where(Order.id == order.id)).one()
        events = session.scalar(
            select(func.count(OrderEvent.id)).where(OrderEvent.order_id == order.id)
        )
    return dict(row._mapping), events


def test_every_listed_move_works_and_every_other_is_refused(app):
    n = 0
    for event, move in MOVES.items():
        for state in OrderState:
            n += 1
            order = make_order(state=state, platform_ref=f"walk{n}")
            before, events_before = row_and_events(order)
            moved = orders.move(order, event)
            after, events_after = row_and_events(order)
            if state in move.sources:
                assert moved is not None, (event, state)
                assert moved.state == move.to == after["state"], (event, state)
                assert events_after == events_before + 1
                assert next_state(state, event) == move.to
            else:
                assert moved is None, (event, state)
                assert after == before, (event, state)  # not even updated_at
                assert events_after == events_before
                assert next_state(state, event) is None


def test_a_move_the_table_does_not_know_is_an_error(app):
    order = make_order(state=OrderState.OPEN)
    with pytest.raises(orders.UnknownEvent):
        orders.move(order, "teleport")


def test_the_state_event_names_where_the_move_may_start(app):
    order = make_order(state=OrderState.PAID)
    orders.move(order, "fulfil_failed", failure_reason="platform down")
    with db.reader() as session:
        last = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
        ).all()[-1]
    assert (last.kind, last.message) == ("state", "-> fulfil_failed")
    assert last.detail == {"from": ["paid"], "to": "fulfil_failed"}


def test_the_derived_sets_agree_with_the_table():
    assert set(REFUNDABLE) | {OrderState.REFUNDED} == set(MOVES["refund_fully"].sources)
    assert set(REFUNDABLE) <= PAID_STATES
    assert set(MOVES["cancel"].sources) <= set(LEARNER_ORDER_STATES)
    targets = {move.to for move in MOVES.values()}
    # every state but the first can be reached, and every state is named by the table
    assert targets | {OrderState.OPEN} == set(OrderState)


def diagram_moves(text: str) -> set[tuple[str, str, str]]:
    block = text.split("<!-- state table: begin -->", 1)[1].split("<!-- state table: end -->")[0]
    found = set()
    for line in block.splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|\s*([^|]+)\|\s*`(\w+)`\s*\|", line)
        if match:
            event, sources, to = match.groups()
            for source in re.findall(r"`(\w+)`", sources):
                found.add((event, source, to))
    return found


def test_the_diagram_in_the_architecture_doc_is_the_table():
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = {
        (event, str(source), str(move.to))
        for event, move in MOVES.items()
        for source in move.sources
    }
    assert diagram_moves(text) == table
    mermaid = text.split("```mermaid", 1)[1].split("```", 1)[0]
    edges = set(re.findall(r"(\w+) --> (\w+): (\w+)", mermaid))
    assert {(event, source, to) for source, to, event in edges} == table
