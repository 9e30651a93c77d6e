"""How threads use the database pool. A request thread holds a connection only for its own
statements: never while it waits on a platform or on Stripe, and never two at once. That is what
lets a process of 16 or 32 threads share a pool of 8 connections with no overflow
(`portal.db.default_pool_size`): threads spend almost all their time on upstream calls, and a
thread that needed two connections at once could wait forever on a pool its own kind had
emptied."""

from __future__ import annotations

import threading

import pytest
import requests
from sqlalchemy import event

from portal import jobs
from portal.db import db, default_pool_size
from portal.models import OrderState
from portal.sandbox.stripe_api import build_event
from tests.conftest import STRIPE_BASE
from tests.test_skilljar_checkout import (
    PURCHASE_URL,
    SESSIONS_URL,
    open_review,
    order_row,
    paid_session,
    pay,
)
from tests.test_webhooks import FULFIL_URL, SESSION_URL, deliver, run_worker

COUPONS_URL = f"{STRIPE_BASE}/v1/coupons"
FULFILLED = {"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}}


class PoolWatch:
    """Which thread holds which of the portal's pooled connections, seen from the pool's own
    events, and what each thread held when it called out or waited."""

    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.Lock()
        self.holders: dict[int, int] = {}  # id(connection record) -> thread ident
        self.upstream: list[tuple[str, str, int]] = []  # (method, url, connections held)
        self.inline_waits: list[int] = []  # connections held when a request waited on a job
        self.second_checkouts: list[str] = []  # thread names that took a second connection
        self.hooks = [
            ("checkout", self._checked_out),
            ("checkin", self._returned),
            ("detach", self._returned),  # the order change listener keeps its own connection
        ]
        for name, hook in self.hooks:
            event.listen(engine, name, hook)

    def remove(self) -> None:
        for name, hook in self.hooks:
            event.remove(self.engine, name, hook)

    def held_here(self) -> int:
        me = threading.get_ident()
        with self.lock:
            return sum(1 for ident in self.holders.values() if ident == me)

    def _checked_out(self, _dbapi_connection, record, _proxy) -> None:
        if self.held_here():
            self.second_checkouts.append(threading.current_thread().name)
        with self.lock:
            self.holders[id(record)] = threading.get_ident()

    def _returned(self, _dbapi_connection, record) -> None:
        with self.lock:
            self.holders.pop(id(record), None)


@pytest.fixture
def watch(app, monkeypatch):
    watch = PoolWatch(db.engine)
    send = requests.Session.send

    def watched_send(session, request, **kwargs):
        watch.upstream.append((request.method, request.url.split("?")[0], watch.held_here()))
        return send(session, request, **kwargs)

    monkeypatch.setattr(requests.Session, "send", watched_send)
    run_inline = jobs.run_inline

    def watched_run_inline(*args, **kwargs):
        watch.inline_waits.append(watch.held_here())
        return run_inline(*args, **kwargs)

    monkeypatch.setattr(jobs, "run_inline", watched_run_inline)
    yield watch
    watch.remove()


def buy_and_return(client, mocked, purchase, checkout_session) -> str:
    """The Skilljar entry, Pay, and the learner's return from Stripe, paid: the return fulfils
    inline (on a job thread, within its budget) and sends the learner on to the academy."""
    review = open_review(client, mocked, purchase)
    assert pay(client, mocked, review.text, checkout_session).status_code == 303
    reference = order_row().reference
    mocked.get(SESSION_URL, json=paid_session(checkout_session, reference))
    mocked.post(FULFIL_URL, json=FULFILLED)
    back = client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    assert back.status_code == 303
    assert back.headers["Location"] == "https://academy.test/thanks"
    assert order_row().state == OrderState.FULFILLED
    return reference


def test_the_default_pool_is_the_threads_up_to_eight():
    assert default_pool_size(1) == 1
    assert default_pool_size(4) == 4
    assert default_pool_size(8) == 8
    assert default_pool_size(32) == 8
    assert default_pool_size(0) == 1


def test_a_process_pool_has_no_overflow(make_app, monkeypatch):
    monkeypatch.setenv("GUNICORN_THREADS", "32")
    make_app()
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's pool is not sized by PORTAL_DB_POOL_SIZE")
    assert (db.engine.pool.size(), db.engine.pool._max_overflow) == (8, 0)
    make_app(DB_POOL_SIZE=3)
    assert (db.engine.pool.size(), db.engine.pool._max_overflow) == (3, 0)


def test_a_whole_purchase_holds_no_connection_while_it_calls_out(
    client, mocked, purchase, checkout_session, watch
):
    reference = buy_and_return(client, mocked, purchase, checkout_session)
    # Stripe's webhook for the same payment arrives afterwards and is re-fetched.
    hint = paid_session(checkout_session, reference)
    assert deliver(client, build_event("checkout.session.completed", hint)).status_code == 200

    calls = [(method, url) for method, url, _held in watch.upstream]
    assert calls == [
        ("GET", PURCHASE_URL),
        ("POST", COUPONS_URL),  # the purchase's promo, as Stripe shows discounts
        ("POST", SESSIONS_URL),
        ("GET", SESSION_URL),
        ("POST", FULFIL_URL),
        ("GET", SESSION_URL),
    ]
    assert [held for _method, _url, held in watch.upstream] == [0, 0, 0, 0, 0, 0]
    assert watch.inline_waits == [0]
    assert watch.second_checkouts == []


def test_the_job_worker_holds_no_connection_while_it_calls_the_platform(
    app, client, mocked, purchase, checkout_session, watch
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    # The learner closed the tab on Stripe's page: only the webhook says it is paid, and the
    # worker fulfils.
    mocked.get(SESSION_URL, json=paid_session(checkout_session, reference))
    hint = paid_session(checkout_session, reference)
    assert deliver(client, build_event("checkout.session.completed", hint)).status_code == 200
    mocked.post(FULFIL_URL, json=FULFILLED)
    run_worker(app, mocked)
    assert order_row().state == OrderState.FULFILLED
    fulfil = [held for method, url, held in watch.upstream if url == FULFIL_URL]
    assert fulfil == [0]
    assert all(held == 0 for _method, _url, held in watch.upstream)
    assert watch.second_checkouts == []


def test_a_whole_purchase_needs_only_one_connection(make_app, mocked, purchase, checkout_session):
    """With a pool of one connection and no overflow, a path that wanted a second connection
    while holding one would wait on itself until the pool's timeout."""
    app = make_app(DB_POOL_SIZE=1)
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite's pool is not sized by PORTAL_DB_POOL_SIZE")
    db.engine.pool._timeout = 5  # fail in seconds, not SQLAlchemy's 30
    buy_and_return(app.test_client(), mocked, purchase, checkout_session)
