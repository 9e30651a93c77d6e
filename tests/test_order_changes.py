"""Order change notifications (portal.orders.changes, migration 0007): a trigger NOTIFYs every
change to an order as it commits, each process listens, and the review page shows a kept order
without asking the database until a change is heard. When the listener cannot be trusted (it is
connecting, its connection was lost, its probe does not come back), pages ask for each order's
row version again, so a change still shows at once."""

from __future__ import annotations

import logging
import time

import psycopg
import pytest
from sqlalchemy import text

from portal.db import db, make_engine, normalise_url
from portal.models import Order, OrderState
from portal.orders.cache import EXTENSION as KEPT_ORDERS_EXTENSION
from portal.orders.cache import KeptOrders
from portal.orders.changes import CHANNEL, ChangeListener
from tests.admin_support import make_order


@pytest.fixture
def postgres(database_url):
    if not database_url.startswith("postgresql"):
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's; on SQLite every page reads the order")
    return database_url


@pytest.fixture
def other_host(postgres):
    engine = make_engine(postgres)
    yield engine
    engine.dispose()


def kept_orders(app) -> KeptOrders:
    return app.extensions[KEPT_ORDERS_EXTENSION]


def wait_until(condition, seconds: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.02)


def open_and_go_live(app, client) -> Order:
    """An open order, shown once (which starts the listener), then shown again once the
    listener is live (which keeps it, trusted)."""
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    assert client.get(f"/orders/{order.reference}").status_code == 200
    kept = kept_orders(app)
    wait_until(lambda: kept.live, what="the listener goes live")
    assert client.get(f"/orders/{order.reference}").status_code == 200
    assert kept.trusted(order.reference) is not None
    return order


def psql_update(engine, sql: str, **values) -> None:
    with engine.begin() as connection:
        connection.execute(text(sql), values)


# --- the trigger ------------------------------------------------------------------------------


def test_every_committed_change_to_an_order_is_notified_and_a_rolled_back_one_is_not(
    app, postgres, other_host
):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    # A plain driver connection: the trigger does not depend on the portal's code.
    url = normalise_url(postgres).replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as listening:
        listening.execute(f"LISTEN {CHANNEL}")
        with other_host.connect() as connection:
            connection.execute(
                text("UPDATE orders SET description = 'not kept' WHERE id = :id"),
                {"id": order.id},
            )
            connection.rollback()
        # The channel is the database's: test runs in other schemas of it notify on it too, so
        # only this order's notifications count.
        assert ours(listening.notifies(timeout=0.5), order) == []
        psql_update(
            other_host, "UPDATE orders SET description = 'kept' WHERE id = :id", id=order.id
        )
        heard = []
        deadline = time.monotonic() + 2.0
        while not heard and time.monotonic() < deadline:
            heard = ours(listening.notifies(timeout=0.2), order)
    assert [(n.channel, n.payload) for n in heard] == [(CHANNEL, order.reference)]


def ours(notifications, order: Order) -> list:
    return [n for n in notifications if n.payload == order.reference]


# --- pages with a live listener ---------------------------------------------------------------


def test_a_kept_order_is_shown_again_without_asking_the_database(app, postgres, monkeypatch):
    client = app.test_client()
    order = open_and_go_live(app, client)
    asked = []
    reader, statements = db.reader, db.statements
    monkeypatch.setattr(db, "reader", lambda: asked.append("row") or reader())
    monkeypatch.setattr(db, "statements", lambda: asked.append("version") or statements())
    page = client.get(f"/orders/{order.reference}")
    assert page.status_code == 200
    assert "Introduction to Python" in page.text
    assert asked == []


def test_a_change_made_elsewhere_is_heard_and_shows_on_the_next_page(app, postgres, other_host):
    """Another host, or an operator at a psql prompt, changes the row with plain SQL: the
    notification drops the kept order, and the next page reads it again."""
    client = app.test_client()
    order = open_and_go_live(app, client)
    kept = kept_orders(app)
    psql_update(
        other_host, "UPDATE orders SET description = 'Advanced Python' WHERE id = :id", id=order.id
    )
    wait_until(lambda: kept.trusted(order.reference) is None, what="the change is heard")
    page = client.get(f"/orders/{order.reference}").text
    assert "Advanced Python" in page
    assert "Introduction to Python" not in page
    psql_update(other_host, "UPDATE orders SET state = 'paid' WHERE id = :id", id=order.id)
    wait_until(lambda: kept.trusted(order.reference) is None, what="the payment is heard")
    paid = client.get(f"/orders/{order.reference}")
    assert paid.status_code == 303
    assert paid.headers["Location"].endswith(f"/orders/{order.reference}/status")


def test_a_lost_listener_falls_back_to_row_versions_and_comes_back(app, postgres, other_host):
    client = app.test_client()
    order = open_and_go_live(app, client)
    kept = kept_orders(app)
    listener = kept.listener
    psql_update(
        other_host, "SELECT pg_terminate_backend(:pid)", pid=listener.backend_pid
    )  # the connection is cut, as a restarted server or a failover would
    wait_until(lambda: not kept.live, what="the listener notices")
    assert len(kept) == 0  # whatever was kept may have missed a change
    # Not live: the page asks for the row's version, so a change shows at once.
    assert "Introduction to Python" in client.get(f"/orders/{order.reference}").text
    psql_update(
        other_host, "UPDATE orders SET description = 'Advanced Python' WHERE id = :id", id=order.id
    )
    assert "Advanced Python" in client.get(f"/orders/{order.reference}").text
    wait_until(lambda: kept.live, seconds=15, what="the listener reconnects")
    assert listener.backend_pid is not None


def test_without_the_listener_setting_pages_ask_for_row_versions(make_app, postgres):
    app = make_app(ORDER_CHANGE_LISTENER=False)
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    client = app.test_client()
    assert client.get(f"/orders/{order.reference}").status_code == 200
    time.sleep(0.3)
    kept = kept_orders(app)
    assert kept.listener is None
    assert not kept.live
    assert kept.trusted(order.reference) is None
    assert kept.get(order.reference, order_version(order)) is not None


def order_version(order: Order) -> str:
    with db.reader() as session:
        return session.scalar(
            text("SELECT xmin::text FROM orders WHERE id = :id"), {"id": order.id}
        )


# --- the listener ----------------------------------------------------------------------------


class Subscriber:
    def __init__(self):
        self.resets: list[bool] = []
        self.changes: list[str] = []

    def reset(self, live: bool) -> None:
        self.resets.append(live)

    def changed(self, reference: str) -> None:
        self.changes.append(reference)


def test_a_listener_whose_probe_never_comes_back_is_never_live(app, postgres, caplog, monkeypatch):
    """Behind a pooler in transaction mode, LISTEN is accepted but nothing is heard: the probe
    (sent here on another channel, to the same effect) does not come back, so the listener
    does not go live and pages keep asking for row versions."""
    listener = ChangeListener(db.engine, probe_timeout=0.3)
    original = ChangeListener._send_probe

    def lost(self):
        probe = original(self)
        return probe + "-never-sent-back"

    monkeypatch.setattr(ChangeListener, "_send_probe", lost)
    subscriber = Subscriber()
    with caplog.at_level(logging.WARNING, logger="portal.order_changes"):
        listener.subscribe(subscriber)
        try:
            wait_until(lambda: "no probe back" in caplog.text, what="the probe is missed")
        finally:
            listener.stop()
    assert True not in subscriber.resets
    assert not listener.live


def test_a_listener_tells_its_subscribers_each_change_once_live(app, postgres, other_host):
    order = make_order(state=OrderState.OPEN, stripe_session_id=None)
    listener = ChangeListener(db.engine, probe_timeout=2.0)
    subscriber = Subscriber()
    listener.subscribe(subscriber)
    try:
        wait_until(lambda: listener.live, what="the listener goes live")
        assert subscriber.resets == [False, True]  # subscribed, then live
        psql_update(other_host, "UPDATE orders SET quantity = 3 WHERE id = :id", id=order.id)
        wait_until(lambda: order.reference in subscriber.changes, what="the change is heard")
        # Other schemas of the database notify on the same channel: only this order counts.
        assert [r for r in subscriber.changes if r == order.reference] == [order.reference]
    finally:
        listener.stop()
    assert subscriber.resets[-1] is False


def test_disposing_the_database_closes_the_listeners_connection_first(app, postgres):
    """The engine's pool is replaced on dispose; a connection the listener still held (or a
    probe's, checked out of the old pool) would never be closed, and would be found open by
    the garbage collector later."""
    client = app.test_client()
    open_and_go_live(app, client)
    listener = db.order_changes()
    connection = listener._connection
    assert connection is not None
    assert not connection.closed
    db.dispose()
    assert connection.closed
    assert not listener._thread.is_alive()


# --- what is trusted --------------------------------------------------------------------------


def test_a_read_that_a_change_overtook_is_kept_but_not_trusted():
    kept = KeptOrders()
    first = Order(description="1")
    kept.put("ord_a", "1", first, kept.mark())
    assert kept.trusted("ord_a") is None  # not live: never trusted
    kept.reset(True)
    mark = kept.mark()
    kept.changed("ord_a")  # heard while the row was being read
    kept.put("ord_a", "1", first, mark)
    assert kept.trusted("ord_a") is None
    assert kept.get("ord_a", "1") is first  # still good for its own version
    kept.put("ord_a", "2", first, kept.mark())  # read after the change
    assert kept.trusted("ord_a") is first
    kept.changed("ord_b")  # another order's change does not matter
    assert kept.trusted("ord_a") is first
    kept.changed("ord_a")
    assert kept.trusted("ord_a") is None
    assert len(kept) == 0


def test_going_live_or_falling_back_forgets_everything_read_before():
    kept = KeptOrders()
    kept.reset(True)
    order = Order(description="1")
    before = kept.mark()
    kept.reset(True)  # reconnected: changes in between were not heard
    kept.put("ord_a", "1", order, before)
    assert kept.trusted("ord_a") is None
    kept.put("ord_a", "1", order, kept.mark())
    assert kept.trusted("ord_a") is order
    kept.reset(False)
    assert kept.trusted("ord_a") is None
    assert len(kept) == 0
    assert kept.mark() is None


def test_too_many_changes_remembered_forget_conservatively(monkeypatch):
    kept = KeptOrders()
    monkeypatch.setattr(KeptOrders, "CHANGES_REMEMBERED", 3)
    kept.reset(True)
    order = Order(description="1")
    mark = kept.mark()
    for reference in ("ord_1", "ord_2", "ord_3", "ord_4"):
        kept.changed(reference)
    kept.put("ord_5", "1", order, mark)  # ord_5 did not change, but its read began before
    assert kept.trusted("ord_5") is None  # the forgetting: no longer provable, so not trusted
    kept.put("ord_5", "1", order, kept.mark())
    assert kept.trusted("ord_5") is order


def test_a_trusted_order_is_asked_for_again_after_trusted_for():
    kept = KeptOrders(trusted_for=0.0)
    kept.reset(True)
    order = Order(description="1")
    kept.put("ord_a", "1", order, kept.mark())
    time.sleep(0.01)
    assert kept.trusted("ord_a") is None
