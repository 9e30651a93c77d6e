"""The job queue and its kinds: retries with back-off, giving up loudly, leases, periodic work, the
expiry sweep, reconciliation, and the `flask portal worker|reconcile` commands. Platform and
Stripe HTTP are stood in by `responses`."""

from __future__ import annotations

import json
import logging
import re
import signal
import time
from collections import Counter
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError

from portal import checkout, fulfilment, jobs, orders
from portal.checkout import OrderDraft
from portal.config import load_settings
from portal.db import db
from portal.jobs import Worker, backoff_seconds, claim_due, claim_one, run_inline, run_job
from portal.models import Job, JobState, Order, OrderEvent, OrderState, utcnow
from tests.conftest import SKILLJAR_BASE, STRIPE_BASE

SESSIONS_URL = f"{STRIPE_BASE}/v1/checkout/sessions"
PURCHASE_URL = f"{SKILLJAR_BASE}/v1/purchases/p1abc"
FULFIL_URL = f"{PURCHASE_URL}/fulfill"
ALERT_URL = "https://alerts.test/hook"
THANKS = {"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}}


# --- helpers --------------------------------------------------------------------------------------


def new_order(platform_ref: str = "p1abc", session_id: str = "cs_test_1", **values) -> Order:
    """An order in `paying`, its learner on Stripe's page for `session_id`."""
    order = checkout.open_order(
        OrderDraft(
            platform="skilljar",
            platform_ref=platform_ref,
            description="Introduction to Python",
            currency="USD",
            amount_minor=7840,
            customer_email="learner@example.com",
        )
    )
    with db.transaction() as session:
        orders.move(
            order,
            "pay",
            session=session,
            **{
                "stripe_session_id": session_id,
                "session_attempt": 1,
                "stripe_session_expires_at": utcnow() + timedelta(hours=1),
                **values,
            },
        )
    return orders.refresh(order)


def stripe_session(order: Order, **fields) -> dict:
    data = {
        "id": order.stripe_session_id,
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "paid",
        "amount_total": 7840,
        "currency": "usd",
        "client_reference_id": order.reference,
        "metadata": {"order_reference": order.reference},
        "payment_intent": "pi_test_1",
        "total_details": {"amount_tax": 0},
        "url": None,
        "created": int(time.time()) - 600,
    }
    data.update(fields)
    return data


def paid_order(app, platform_ref: str = "p1abc") -> Order:
    """A paid order with its fulfil job queued, as the return page or a webhook leaves it."""
    order = new_order(platform_ref)
    assert checkout.record_payment(
        app.extensions["portal"], order, stripe_session(order), source="test"
    )
    return orders.refresh(order)


def job_for(key: str) -> Job:
    with db.reader() as session:
        return session.scalar(select(Job).where(Job.dedupe_key == key))


def state_of(order: Order) -> str:
    return orders.refresh(order).state


def fulfil_calls(mocked) -> list:
    return [c for c in mocked.calls if c.request.url == FULFIL_URL]


def statuses(calls) -> list:
    return [getattr(c.response, "status_code", "error") for c in calls]


def purchase_state(mocked, state: str) -> None:
    mocked.get(PURCHASE_URL, json={"id": "p1abc", "state": state})


@pytest.fixture
def no_sessions(mocked):
    """The periodic reconciliation a worker runs lists no Checkout Sessions."""
    mocked.get(SESSIONS_URL, json={"object": "list", "data": [], "has_more": False})


def run_worker(app) -> dict:
    return Worker(app.extensions["portal"], poll_seconds=0).run(once=True)


def drain(app, key: str) -> Counter:
    """`worker --once` until the job `key` has an outcome (retries here are due at once; a few
    passes absorb a wall clock that steps while the test runs). Returns the summed counts."""
    total: Counter = Counter()
    for _ in range(20):
        total.update(run_worker(app))
        job = job_for(key)
        if job.state != JobState.QUEUED:
            return total
    raise AssertionError(f"{key} never reached an outcome")


@pytest.fixture
def keep_signal_handlers():
    """`flask portal worker` installs SIGTERM/SIGINT handlers; give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


# --- retries --------------------------------------------------------------------------------------


def test_platform_outage_for_n_attempts_then_recovery_fulfils_exactly_once(
    make_app, mocked, no_sessions
):
    app = make_app(RETRY_MAX_ATTEMPTS="6")
    order = paid_order(app)
    purchase_state(mocked, "CREATED")
    for status in (503, 429, 500):
        mocked.post(FULFIL_URL, json={"detail": "unavailable"}, status=status)
    mocked.post(FULFIL_URL, body=requests.ConnectionError("connection reset"))
    mocked.post(FULFIL_URL, json=THANKS)
    counts = drain(app, f"fulfil:{order.id}")
    assert statuses(fulfil_calls(mocked)) == [503, 429, 500, "error", 200]
    bodies = [json.loads(c.request.body) for c in fulfil_calls(mocked)]
    assert all(b["state"] == "SUCCESS" for b in bodies)
    assert state_of(order) == OrderState.FULFILLED
    job = job_for(f"fulfil:{order.id}")
    assert (job.state, job.attempts, job.locked_by) == (JobState.DONE, 5, None)
    assert counts["retry"] == 4
    # Each retry first asked Skilljar whether an earlier attempt had gone through.
    gets = [c for c in mocked.calls if c.request.method == "GET" and c.request.url == PURCHASE_URL]
    assert len(gets) == 4


def test_permanent_platform_error_stops_at_once_and_alerts(make_app, mocked, no_sessions, caplog):
    app = make_app(ALERT_WEBHOOK_URL=ALERT_URL)
    order = paid_order(app)
    mocked.post(FULFIL_URL, json={"state": ["Not a valid choice."]}, status=400)
    purchase_state(mocked, "CREATED")  # not "already done"
    mocked.post(ALERT_URL, json={"ok": True})
    with caplog.at_level(logging.ERROR):
        run_worker(app)
    assert len(fulfil_calls(mocked)) == 1
    row = orders.refresh(order)
    assert row.state == OrderState.FULFIL_FAILED
    assert "HTTP 400" in row.failure_reason
    job = job_for(f"fulfil:{order.id}")
    assert (job.state, job.attempts) == (JobState.DEAD, 1)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert any(order.reference in r.getMessage() and "ALERT" in r.getMessage() for r in errors)
    (alert,) = [c.request for c in mocked.calls if c.request.url == ALERT_URL]
    body = json.loads(alert.body)
    assert body["order"] == order.reference
    assert body["state"] == OrderState.FULFIL_FAILED
    assert order.reference in body["text"]
    with db.reader() as session:
        kinds = session.scalars(
            select(OrderEvent.kind).where(OrderEvent.order_id == order.id)
        ).all()
    assert "alert" in kinds
    # The learner is told the payment is safe and is not offered to pay again.
    page = app.test_client().get(f"/orders/{order.reference}/status")
    assert "Please do not pay again" in page.text


def test_too_many_transient_failures_end_in_fulfil_failed(make_app, mocked, no_sessions, caplog):
    app = make_app(RETRY_MAX_ATTEMPTS="3")
    order = paid_order(app)
    purchase_state(mocked, "CREATED")
    mocked.post(FULFIL_URL, json={"detail": "down"}, status=503)
    with caplog.at_level(logging.ERROR):
        counts = drain(app, f"fulfil:{order.id}")
    assert statuses(fulfil_calls(mocked)) == [503, 503, 503]
    assert state_of(order) == OrderState.FULFIL_FAILED
    job = job_for(f"fulfil:{order.id}")
    assert (job.state, job.attempts) == (JobState.DEAD, 3)
    assert counts["dead"] == 1
    assert any(order.reference in r.getMessage() for r in caplog.records)
    assert not any(c.request.url == ALERT_URL for c in mocked.calls)  # none configured


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    settings = load_settings({"RETRY_BASE_SECONDS": 10.0, "RETRY_MAX_SECONDS": 300.0}, environ={})
    for attempts in range(1, 12):
        ceiling = min(300.0, 10.0 * 2 ** (attempts - 1))
        samples = [backoff_seconds(settings, attempts) for _ in range(50)]
        assert all(ceiling / 2 <= s <= ceiling for s in samples)
        assert len(set(samples)) > 1  # jitter: workers do not retry in lockstep
    means = [sum(backoff_seconds(settings, a) for _ in range(200)) / 200 for a in (1, 2, 3, 4)]
    assert means == sorted(means)
    assert max(backoff_seconds(settings, 40) for _ in range(100)) <= 300.0


def test_transient_failure_waits_for_its_backoff_before_the_next_attempt(
    make_app, mocked, no_sessions
):
    app = make_app(RETRY_BASE_SECONDS="60")
    order = paid_order(app)
    mocked.post(FULFIL_URL, json={"detail": "down"}, status=503)
    before = utcnow()
    run_worker(app)
    job = job_for(f"fulfil:{order.id}")
    assert (job.state, job.attempts, job.locked_by) == (JobState.QUEUED, 1, None)
    assert "HTTP 503" in job.last_error
    assert before + timedelta(seconds=30) <= job.run_at <= utcnow() + timedelta(seconds=60)
    run_worker(app)  # not due yet: nothing happens
    assert len(fulfil_calls(mocked)) == 1
    assert state_of(order) == OrderState.PAID


@pytest.mark.parametrize("first_answer", ["timeout", "already"])
def test_already_success_on_retry_counts_as_success_without_a_second_fulfil_call(
    make_app, mocked, no_sessions, first_answer
):
    """The first attempt went through but its answer was lost (a read timeout), or Skilljar says
    the purchase is already done: the retry asks first, and counts SUCCESS as success."""
    # A read timeout of 0 makes the post-timeout wait (2 x read timeout) nothing here.
    app = make_app(HTTP_READ_TIMEOUT="0")
    order = paid_order(app)
    if first_answer == "timeout":
        mocked.post(FULFIL_URL, body=requests.ReadTimeout("read timed out"))
    else:
        mocked.post(FULFIL_URL, json={"detail": "Purchase is already SUCCESS."}, status=400)
    purchase_state(mocked, "SUCCESS")
    drain(app, f"fulfil:{order.id}")
    assert len(fulfil_calls(mocked)) == 1
    row = orders.refresh(order)
    assert row.state == OrderState.FULFILLED
    with db.reader() as session:
        notes = session.scalars(
            select(OrderEvent.message).where(OrderEvent.order_id == order.id)
        ).all()
    assert "Skilljar purchase already SUCCESS" in notes


def test_a_timed_out_fulfil_waits_for_the_call_to_land_before_retrying(make_app, mocked):
    """A timeout is ambiguous (the call may still be applied): the retry waits at least twice
    the read timeout, however small the back-off base, so it sees the platform's new state."""
    app = make_app(HTTP_READ_TIMEOUT="20")
    order = paid_order(app)
    mocked.post(FULFIL_URL, body=requests.ReadTimeout("read timed out"))
    before = utcnow()
    run_worker(app)
    job = job_for(f"fulfil:{order.id}")
    assert job.state == JobState.QUEUED
    assert job.run_at >= before + timedelta(seconds=40)
    assert len(fulfil_calls(mocked)) == 1


# --- leases ---------------------------------------------------------------------------------------


def test_lease_held_by_another_worker_is_not_stolen_until_it_expires(make_app, mocked):
    app = make_app()
    services = app.extensions["portal"]
    order = paid_order(app)
    key = f"fulfil:{order.id}"
    (held,) = claim_due(services.settings, "worker-a")
    assert held.locked_by == "worker-a"
    assert claim_due(services.settings, "worker-b") == []
    assert claim_one(services.settings, held.id, "worker-b") is None
    run_inline(services, key, 0.3)  # the return page waits for the holder; it does not run it
    assert len(mocked.calls) == 0
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == held.id)
            .values(locked_until=utcnow() - timedelta(seconds=1))
        )
    (taken,) = claim_due(services.settings, "worker-b")
    assert (taken.locked_by, taken.attempts) == ("worker-b", 2)
    # Worker A wakes up with its stale claim: it must not call the platform.
    assert run_job(services, held, "worker-a") == "lost"
    assert len(mocked.calls) == 0
    purchase_state(mocked, "CREATED")
    mocked.post(FULFIL_URL, json=THANKS)
    assert run_job(services, taken, "worker-b") == "done"
    assert len(fulfil_calls(mocked)) == 1
    assert state_of(order) == OrderState.FULFILLED


def test_requeue_leaves_a_held_job_alone_and_resets_or_keeps_attempts(make_app, mocked):
    """jobs.requeue, behind the console's Resend and retry fulfilment: never under a worker that
    holds the job; a fresh set of attempts, or, when asked, a queued job keeps its count."""
    app = make_app()
    services = app.extensions["portal"]
    order = paid_order(app)
    key = f"fulfil:{order.id}"
    (held,) = claim_due(services.settings, "worker-a")

    def job():
        with db.reader() as session:
            return session.scalar(select(Job).where(Job.dedupe_key == key))

    with db.transaction() as session:
        assert jobs.requeue(session, key) is False  # worker-a holds it
    assert (job().locked_by, job().attempts) == ("worker-a", 1)
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.id == held.id)
            .values(locked_until=utcnow() - timedelta(seconds=1), attempts=3)
        )
        assert jobs.requeue(session, key, keep_queued_attempts=True) is True
    after = job()
    assert (after.state, after.attempts, after.locked_by, after.locked_until) == (
        JobState.QUEUED,
        3,
        None,
        None,
    )
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == held.id).values(state=JobState.DEAD))
        assert jobs.requeue(session, key, keep_queued_attempts=True) is True
    assert (job().state, job().attempts) == (JobState.QUEUED, 0)  # it had ended: starts again
    with db.transaction() as session:
        session.execute(update(Job).where(Job.id == held.id).values(attempts=4, last_error="x"))
        assert jobs.requeue(session, key) is True
    assert (job().attempts, job().last_error) == (0, None)
    assert job().run_at <= utcnow()


def test_a_slow_job_keeps_its_lease_while_it_runs(make_app, mocked):
    """A platform call slower than the lease: the running worker renews its lease, so no other
    worker can take the job (and call the platform a second time) meanwhile."""
    app = make_app(JOB_LEASE_SECONDS="1")
    services = app.extensions["portal"]
    order = paid_order(app)
    (job,) = claim_due(services.settings, "worker-a")
    first_lease_end = job.locked_until
    during = {}

    def slow_fulfil(_request):
        while utcnow() < first_lease_end + timedelta(milliseconds=300):
            time.sleep(0.05)
        during["other worker got"] = claim_due(services.settings, "worker-b")
        during["lease"] = job_for(f"fulfil:{order.id}").locked_until
        return 200, {}, json.dumps(THANKS)

    mocked.add_callback("POST", FULFIL_URL, callback=slow_fulfil)
    assert run_job(services, job, "worker-a") == "done"
    assert during["other worker got"] == []
    assert during["lease"] > first_lease_end
    assert len(fulfil_calls(mocked)) == 1
    assert state_of(order) == OrderState.FULFILLED


def test_giving_up_that_fails_half_way_is_retried_after_the_lease(
    make_app, mocked, no_sessions, monkeypatch, caplog
):
    """The database fails while the order is being marked fulfil_failed: the job is not left dead
    with the order still `paid` and nobody alerted. It comes back and gives up properly."""
    app = make_app(RETRY_MAX_ATTEMPTS="1")
    order = paid_order(app)
    purchase_state(mocked, "CREATED")
    mocked.post(FULFIL_URL, json={"detail": "down"}, status=503)
    real_give_up = app.extensions["portal"].job_kinds["fulfil"].give_up
    calls = []

    def flaky_give_up(services, job, error):
        calls.append(job.attempts)
        if len(calls) == 1:
            raise OperationalError("UPDATE orders", {}, Exception("server closed the connection"))
        real_give_up(services, job, error)

    monkeypatch.setattr(app.extensions["portal"].job_kinds["fulfil"], "give_up", flaky_give_up)
    with pytest.raises(OperationalError):
        run_worker(app)  # `--once` reports the failure
    job = job_for(f"fulfil:{order.id}")
    assert job.state == JobState.QUEUED
    assert job.locked_by is not None
    assert state_of(order) == OrderState.PAID
    with db.transaction() as session:
        session.execute(
            update(Job).where(Job.id == job.id).values(locked_until=utcnow() - timedelta(seconds=1))
        )
    with caplog.at_level(logging.ERROR):
        run_worker(app)
    assert state_of(order) == OrderState.FULFIL_FAILED
    assert job_for(f"fulfil:{order.id}").state == JobState.DEAD
    assert calls == [1, 2]
    assert any(order.reference in r.getMessage() for r in caplog.records)


def test_worker_survives_the_database_going_away(make_app, mocked, monkeypatch):
    app = make_app()
    order = paid_order(app)
    mocked.post(FULFIL_URL, json=THANKS)
    worker = Worker(app.extensions["portal"], poll_seconds=0)
    worker.error_pause_seconds = 0
    real_claim = jobs.claim_due
    attempts = []

    def claim(settings, worker_id, limit=1):
        attempts.append(1)
        if len(attempts) == 1:
            raise OperationalError("SELECT jobs", {}, Exception("could not connect to server"))
        claimed = real_claim(settings, worker_id, limit)
        if not claimed and state_of(order) == OrderState.FULFILLED:
            worker.stopping.set()
        return claimed

    monkeypatch.setattr(jobs, "claim_due", claim)
    monkeypatch.setattr(app.extensions["portal"].job_kinds["reconcile"], "run", lambda *_: None)
    counts = worker.run()  # forever, until it stops itself above
    assert len(attempts) >= 2
    assert counts["done"] >= 1
    assert state_of(order) == OrderState.FULFILLED


# --- periodic work --------------------------------------------------------------------------------


def test_periodic_jobs_reschedule_themselves(make_app, mocked, no_sessions):
    app = make_app()
    before = utcnow()
    run_worker(app)
    sweep = job_for("periodic:expire_sweep")
    reconcile = job_for("periodic:reconcile")
    for job, every in ((sweep, 300), (reconcile, 3600)):
        assert job.state == JobState.QUEUED
        assert job.attempts == 0
        assert job.locked_by is None
        assert job.last_error is None
        assert before + timedelta(seconds=every) <= job.run_at
        assert job.run_at <= utcnow() + timedelta(seconds=every)
    run_worker(app)  # not due again: no second listing
    assert len([c for c in mocked.calls if c.request.url.startswith(SESSIONS_URL)]) == 1


def test_failing_periodic_job_waits_for_its_next_turn(make_app, mocked):
    app = make_app()
    mocked.get(SESSIONS_URL, json={"error": {"type": "api_error"}}, status=400)
    run_worker(app)
    job = job_for("periodic:reconcile")
    assert job.state == JobState.QUEUED
    assert "checkout.sessions.list" in job.last_error
    assert job.run_at > utcnow() + timedelta(seconds=3000)


def test_flask_portal_worker_once_exits_zero(
    app, runner, mocked, no_sessions, keep_signal_handlers
):
    order = paid_order(app)
    mocked.post(FULFIL_URL, json=THANKS)
    result = runner.invoke(args=["portal", "worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "(once)" in result.output
    # The fulfilment, plus one turn of each periodic job (sweeps, reconciliation, expiries).
    periodic = sum(
        1 for kind in app.extensions["portal"].job_kinds.values() if kind.every_seconds is not None
    )
    assert f"worker stopped: done {1 + periodic}, retry 0, dead 0, lost 0" in result.output
    assert state_of(order) == OrderState.FULFILLED


# --- expiry ---------------------------------------------------------------------------------------


def test_expiry_sweep_expires_stale_orders_and_the_next_visit_starts_a_fresh_session(
    app, mocked, no_sessions, monkeypatch
):
    monkeypatch.setattr(fulfilment, "SWEEP_BATCH", 2)  # several pages
    past = utcnow() - timedelta(minutes=10)
    broken = new_order("p0broken", "cs_test_gone", stripe_session_expires_at=past)
    stale = [
        new_order(f"p{i}stale", f"cs_test_{i}", stripe_session_expires_at=past) for i in range(3)
    ]
    fresh = new_order("p9fresh", "cs_test_fresh")
    mocked.get(
        f"{SESSIONS_URL}/cs_test_gone",
        json={"error": {"type": "invalid_request_error", "code": "resource_missing"}},
        status=404,
    )
    for order in stale:
        mocked.get(
            f"{SESSIONS_URL}/{order.stripe_session_id}",
            json=stripe_session(order, status="expired", payment_status="unpaid"),
        )
    run_worker(app)
    assert [state_of(o) for o in stale] == [OrderState.EXPIRED] * 3
    assert state_of(broken) == OrderState.PAYING  # Stripe could not say; tried again later
    assert state_of(fresh) == OrderState.PAYING  # not due: its session is still open
    assert "1 session(s) could not be checked" in job_for("periodic:expire_sweep").last_error
    assert not any("cs_test_fresh" in c.request.url for c in mocked.calls)

    # The learner comes back: a fresh Checkout Session, under a new idempotency key.
    client = app.test_client()
    order = stale[0]
    review = client.get(f"/orders/{order.reference}")
    assert review.status_code == 200
    token = review.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    mocked.post(
        SESSIONS_URL,
        json={**stripe_session(order, status="open", payment_status="unpaid"), "id": "cs_new"}
        | {"url": "https://checkout.stripe.test/c/pay/cs_new"},
    )
    response = client.post(f"/orders/{order.reference}/pay", data={"csrf_token": token})
    assert response.headers["Location"] == "https://checkout.stripe.test/c/pay/cs_new"
    create = [c.request for c in mocked.calls if c.request.method == "POST"][-1]
    assert create.headers["Idempotency-Key"] == f"{order.reference}-attempt-2"
    row = orders.refresh(order)
    assert (row.state, row.stripe_session_id) == (OrderState.PAYING, "cs_new")


# --- reconciliation -------------------------------------------------------------------------------


def test_reconcile_repairs_a_paid_session_whose_order_was_never_marked_paid(app, runner, mocked):
    """Neither the return nor the webhook ever arrived. `flask portal reconcile` finds the paid
    session, records the payment, and the worker fulfils it."""
    lost = new_order("p1abc", "cs_test_1")
    abandoned = new_order("p2abc", "cs_test_2")
    sessions = [
        stripe_session(lost),
        stripe_session(abandoned, status="expired", payment_status="unpaid"),
        {
            "id": "cs_test_foreign",
            "status": "complete",
            "payment_status": "paid",
            "client_reference_id": None,
            "metadata": {},
            "created": int(time.time()),
        },
    ]
    mocked.get(SESSIONS_URL, json={"object": "list", "data": sessions, "has_more": False})
    result = runner.invoke(args=["portal", "reconcile", "--since", "48h"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    table = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in lines)
    assert table["Checkout Sessions seen"] == "3"
    assert table["ours"] == "2"
    assert table["not ours"] == "1"
    assert table["paid"] == "1"
    assert table["orders repaired"] == "2"
    assert table["paid, awaiting fulfilment"] == "1"
    assert f"repaired  {lost.reference}: paying -> paid" in lines
    assert f"repaired  {abandoned.reference}: paying -> expired" in lines
    listing = next(c.request for c in mocked.calls if c.request.url.startswith(SESSIONS_URL))
    gte = int(parse_qs(urlsplit(listing.url).query)["created[gte]"][0])
    assert abs(gte - (time.time() - 48 * 3600)) < 60
    row = orders.refresh(lost)
    assert (row.state, row.amount_paid_minor, row.stripe_payment_intent_id) == (
        OrderState.PAID,
        7840,
        "pi_test_1",
    )
    assert state_of(abandoned) == OrderState.EXPIRED

    mocked.post(FULFIL_URL, json=THANKS)
    run_worker(app)  # its own periodic reconciliation sees the same sessions: nothing more
    assert state_of(lost) == OrderState.FULFILLED
    assert len(fulfil_calls(mocked)) == 1
    again = runner.invoke(args=["portal", "reconcile", "--since", "2d"])
    assert re.search(r"^orders repaired\s+0$", again.output, re.MULTILINE)


def test_reconcile_reports_stripe_being_unreachable(runner, mocked, monkeypatch):
    import stripe._http_client

    monkeypatch.setattr(stripe._http_client.HTTPClient, "_sleep_time_seconds", lambda *_: 0)
    mocked.get(SESSIONS_URL, body=requests.ConnectionError("refused"))
    result = runner.invoke(args=["portal", "reconcile"])
    assert result.exit_code == 1
    assert "Stripe could not be reached" in result.output
