"""Finding orders and seeing what happened to them: search and filters, pagination, the CSV
export, the order page with its full timeline, and the dashboard."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta

import pytest

from portal.admin import figures, queries
from portal.db import db
from portal.models import Order, OrderEvent, OrderState, utcnow
from tests.admin_support import (
    audit_entries,
    make_order,
)

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing


def listed(page_text: str) -> list[str]:
    """The order references in a search result page, in order."""
    body = page_text.split("<tbody>")[1] if "<tbody>" in page_text else ""
    import re

    return re.findall(r'href="/admin/orders/(ord_[\w-]+)"', body)


@pytest.fixture
def orders(app):
    now = utcnow()
    return {
        "ada": make_order(
            platform_ref="p1ada",
            customer_email="Ada@Example.com",
            stripe_session_id="cs_test_ada",
            stripe_payment_intent_id="pi_test_ada",
            state=OrderState.FULFILLED,
            created_at=now - timedelta(days=1),
        ),
        "bob": make_order(
            platform_ref="p2bob",
            customer_email="bob@example.com",
            stripe_session_id="cs_test_bob",
            state=OrderState.PAYING,
            created_at=now - timedelta(days=3),
        ),
        "eve": make_order(
            platform="openlearning",
            platform_ref="jti-eve",
            customer_email="eve@example.com",
            stripe_session_id="cs_test_eve",
            stripe_payment_intent_id="pi_test_eve",
            state=OrderState.FULFIL_FAILED,
            created_at=now - timedelta(days=10),
        ),
    }


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["ada", "bob", "eve"]),
        ("platform_ref=p2bob", ["bob"]),
        ("email=ada@example.com", ["ada"]),
        ("email=ADA@EXAMPLE.COM", ["ada"]),
        ("stripe_id=cs_test_bob", ["bob"]),
        ("stripe_id=pi_test_eve", ["eve"]),
        ("state=fulfil_failed", ["eve"]),
        ("platform=skilljar", ["ada", "bob"]),
        ("platform=skilljar&state=paying", ["bob"]),
        ("email=nobody@example.com", []),
    ],
)
def test_search_filters(console, orders, query, expected):
    page = console("operator").get(f"/admin/orders?{query}")
    assert page.status_code == 200
    assert listed(page.text) == [orders[name].reference for name in expected]


def test_search_by_our_own_reference(console, orders):
    page = console("operator").get(f"/admin/orders?platform_ref={orders['eve'].reference}")
    assert listed(page.text) == [orders["eve"].reference]


def test_date_range_is_inclusive_of_both_days(console, orders):
    today = utcnow().date()
    client = console("operator")
    since_two_days = client.get(f"/admin/orders?date_from={today - timedelta(days=2)}")
    assert listed(since_two_days.text) == [orders["ada"].reference]
    window = client.get(
        f"/admin/orders?date_from={today - timedelta(days=3)}&date_to={today - timedelta(days=3)}"
    )
    assert listed(window.text) == [orders["bob"].reference]


def test_a_bad_date_range_is_explained(console, orders):
    page = console("operator").get("/admin/orders?date_from=2026-05-02&date_to=2026-05-01")
    assert page.status_code == 400
    assert "end date is before the start date" in page.text
    assert listed(page.text) == []
    assert console("operator").get("/admin/orders?date_from=yesterday").status_code == 400


def test_results_are_paginated_newest_first(console):
    now = utcnow()
    with db.transaction() as session:
        for index in range(queries.PER_PAGE + 3):
            session.add(
                Order(
                    platform="skilljar",
                    platform_ref=f"p{index}",
                    description="Course",
                    currency="USD",
                    amount_minor=100,
                    platform_data={},
                    created_at=now - timedelta(minutes=index),
                )
            )
    client = console("operator")
    first = client.get("/admin/orders?platform=skilljar")
    assert f"{queries.PER_PAGE + 3} orders" in first.text
    assert len(listed(first.text)) == queries.PER_PAGE
    assert "Page 1 of 2" in first.text
    assert 'href="/admin/orders?page=2&amp;platform=skilljar"' in first.text
    second = client.get("/admin/orders?platform=skilljar&page=2")
    assert len(listed(second.text)) == 3
    assert "p52" in second.text  # the oldest
    assert "Previous" in second.text
    beyond = client.get("/admin/orders?platform=skilljar&page=99")
    assert "Page 2 of 2" in beyond.text


def test_csv_export_follows_the_filters_and_is_audited(console, orders):
    client = console("operator")
    response = client.get("/admin/orders.csv?platform=skilljar")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith('attachment; filename="orders-')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["reference"] for r in rows] == [orders["ada"].reference, orders["bob"].reference]
    ada = rows[0]
    assert ada["platform_ref"] == "p1ada"
    assert ada["customer_email"] == "Ada@Example.com"
    assert ada["amount_paid"] == "78.40"
    assert ada["amount_refunded"] == "0.00"
    assert ada["stripe_payment_intent_id"] == "pi_test_ada"
    assert ada["state"] == "fulfilled"
    entry = audit_entries("orders.export")[-1]
    assert entry.actor == "operator@example.com"
    assert entry.detail == {"filters": {"platform": "skilljar"}}


def test_csv_export_defuses_spreadsheet_formulas(console):
    make_order(customer_name='=HYPERLINK("http://evil.example")', customer_email="@x.example")
    rows = list(csv.DictReader(io.StringIO(console("operator").get("/admin/orders.csv").text)))
    assert rows[0]["customer_name"] == '\'=HYPERLINK("http://evil.example")'
    assert rows[0]["customer_email"] == "'@x.example"


def test_csv_export_streams_every_row_in_batches(orders):
    text = "".join(queries.export_orders(queries.OrderFilters(), batch=2))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["reference"] for r in rows] == [o.reference for o in orders.values()]


# --- the order page ----------------------------------------------------------------------------


def test_the_order_page_shows_amounts_platform_data_and_the_full_timeline(console):
    order = make_order(state=OrderState.FULFILLED, amount_refunded_minor=0)
    with db.transaction() as session:
        session.add_all(
            [
                OrderEvent(
                    order_id=order.id,
                    kind="http",
                    message="GET https://skilljar.test/v1/purchases/p1abc -> 200",
                    detail={
                        "method": "GET",
                        "url": "https://skilljar.test/v1/purchases/p1abc",
                        "status": 200,
                        "error": None,
                    },
                    duration_ms=87,
                ),
                OrderEvent(
                    order_id=order.id,
                    kind="http",
                    message="STRIPE checkout.sessions.create -> 200",
                    detail={
                        "method": "STRIPE",
                        "url": "checkout.sessions.create",
                        "status": 200,
                        "error": None,
                    },
                    duration_ms=412,
                ),
                OrderEvent(
                    order_id=order.id,
                    kind="webhook",
                    message="checkout.session.completed",
                    detail={"event": "evt_test_1"},
                ),
                OrderEvent(
                    order_id=order.id,
                    kind="state",
                    message="-> fulfilled",
                    detail={"from": ["paid"], "to": "fulfilled"},
                ),
                OrderEvent(
                    order_id=order.id,
                    kind="http",
                    message="POST https://skilljar.test/v1/purchases/p1abc/fulfill -> timeout",
                    detail={
                        "method": "POST",
                        "url": "https://skilljar.test/v1/purchases/p1abc/fulfill",
                        "status": None,
                        "error": "timeout",
                    },
                    duration_ms=15003,
                ),
                OrderEvent(
                    order_id=order.id,
                    kind="operator",
                    message="marked resolved: enrolled by hand (by ops@example.com)",
                    detail={"action": "resolve", "actor": "ops@example.com"},
                ),
            ]
        )
    page = console("operator").get(f"/admin/orders/{order.reference}")
    assert page.status_code == 200
    text = page.text
    for expected in (
        "Introduction to Python",
        "$78.40",  # price and paid
        "$49.00",  # list price
        "LAUNCH20",
        "Grace Hopper",
        "learner@example.com",
        "pi_test_1",
        "cs_test_1",
        '"offer_id": "off1"',  # the platform's data
        "https://skilljar.test/v1/purchases/p1abc",
        "87 ms",
        "checkout.sessions.create",
        "412 ms",
        "checkout.session.completed",
        "-&gt; fulfilled",
        "timeout",
        "15003 ms",
        "marked resolved: enrolled by hand (by ops@example.com)",
        'class="event-http failed"',
        "Refund</a>",
    ):
        assert expected in text, expected
    assert "Retry fulfilment now" not in text  # fulfilled: nothing to retry
    assert "Cancel order" not in text


def test_an_unknown_order_is_404(console):
    assert console("operator").get("/admin/orders/ord_doesnotexist123").status_code == 404


@pytest.mark.parametrize(
    ("state", "buttons"),
    [
        (OrderState.OPEN, {"Cancel order"}),
        (OrderState.PAYING, {"Cancel order"}),
        (OrderState.PAID, {"Retry fulfilment now", "Refund"}),
        (OrderState.FULFIL_FAILED, {"Retry fulfilment now", "Refund", "Mark as resolved"}),
        (OrderState.FULFILLED, {"Refund"}),
        (OrderState.REFUNDED, set()),
        (OrderState.CANCELLED, set()),
    ],
)
def test_the_order_page_offers_only_the_actions_that_fit(console, state, buttons):
    fields = {"amount_refunded_minor": 7840} if state == OrderState.REFUNDED else {}
    order = make_order(state=state, **fields)
    text = console("operator").get(f"/admin/orders/{order.reference}").text
    offered = {
        label
        for label in ("Retry fulfilment now", "Refund", "Cancel order", "Mark as resolved")
        if f">{label}</a>" in text
    }
    assert offered == buttons


# --- the dashboard -----------------------------------------------------------------------------


def http_event(order: Order, method: str, status: int | None, error=None, **fields):
    return OrderEvent(
        order_id=order.id,
        kind="http",
        message=f"{method} -> {status}",
        detail={"method": method, "url": "https://x.test/", "status": status, "error": error},
        **fields,
    )


def test_dashboard_counts_today_and_the_last_seven_days(console):
    now = datetime.now(UTC)
    midnight = datetime.combine(now.date(), datetime.min.time(), UTC)
    today = max(midnight + timedelta(minutes=1), now - timedelta(minutes=30))
    earlier = now - timedelta(days=3)
    make_order(platform_ref="a", state=OrderState.OPEN, created_at=today)
    make_order(
        platform_ref="b",
        state=OrderState.FULFILLED,
        created_at=today,
        paid_at=today,
        fulfilled_at=today,
    )
    make_order(platform_ref="c", state=OrderState.PAID, created_at=earlier, paid_at=earlier)
    make_order(platform_ref="d", state=OrderState.CANCELLED, created_at=earlier)
    make_order(
        platform_ref="old",
        state=OrderState.FULFILLED,
        created_at=now - timedelta(days=9),
        paid_at=now - timedelta(days=9),
        fulfilled_at=now - timedelta(days=9),
    )
    board = figures.dashboard(now)
    today_window, week = board.windows
    assert (today_window.started, today_window.paid, today_window.fulfilled) == (2, 1, 1)
    assert today_window.conversion == 0.5
    assert (week.started, week.paid, week.fulfilled) == (4, 2, 1)
    assert week.conversion == 0.5
    page = console("operator").get("/admin/dashboard").text
    assert "Today (UTC)" in page
    assert "50.0%" in page


def test_dashboard_lists_orders_needing_attention(console):
    now = utcnow()
    stalled = make_order(
        platform_ref="stalled", state=OrderState.PAID, paid_at=now - timedelta(minutes=6)
    )
    make_order(platform_ref="fresh", state=OrderState.PAID, paid_at=now - timedelta(minutes=2))
    failed = make_order(platform_ref="failed", state=OrderState.FULFIL_FAILED)
    disputed = make_order(platform_ref="disputed", state=OrderState.FULFILLED, disputed=True)
    board = figures.dashboard(now)
    assert [o.reference for o in board.unfulfilled] == [stalled.reference]
    assert [o.reference for o in board.fulfil_failed] == [failed.reference]
    assert [o.reference for o in board.disputed] == [disputed.reference]
    page = console("operator").get("/admin/dashboard").text
    for order in (stalled, failed, disputed):
        assert f'href="/admin/orders/{order.reference}"' in page


def test_dashboard_error_rates_per_platform_and_for_stripe(console):
    skilljar = make_order(platform_ref="s1")
    openlearning = make_order(platform="openlearning", platform_ref="o1")
    old = utcnow() - timedelta(days=8)
    with db.transaction() as session:
        session.add_all(
            [
                http_event(skilljar, "GET", 200),
                http_event(skilljar, "POST", 503),
                http_event(skilljar, "POST", None, "timeout"),
                http_event(skilljar, "PUT", 400),  # our request was refused: not an outage
                http_event(skilljar, "POST", 500, created_at=old),  # outside the window
                http_event(openlearning, "POST", 201),
                http_event(skilljar, "STRIPE", 200),
                http_event(openlearning, "STRIPE", 502, "APIError"),
            ]
        )
    stats = {s.target: s for s in figures.call_stats(utcnow() - timedelta(days=7))}
    assert (stats["skilljar"].calls, stats["skilljar"].errors) == (4, 2)
    assert stats["skilljar"].error_rate == 0.5
    assert (stats["openlearning"].calls, stats["openlearning"].errors) == (1, 0)
    assert (stats["stripe"].calls, stats["stripe"].errors) == (2, 1)
    page = console("operator").get("/admin/dashboard").text
    assert "Stripe" in page
    assert "50.0%" in page


def test_an_empty_dashboard_reads_well(console):
    page = console("operator").get("/admin/dashboard")
    assert page.status_code == 200
    assert "No order is waiting for an operator." in page.text
    assert "—" in page.text  # no conversion without orders
