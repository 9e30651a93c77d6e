"""Exactly once, across OS processes, on PostgreSQL: the portal under real gunicorn (2 worker
processes) in sandbox mode, `flask portal worker` processes, and racing clients that are OS
processes of their own (`tests/race_client.py`, released together). Every Skilljar call the
stand-in answers is recorded in the sandbox store; SUCCESS fulfil calls are counted there."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from sqlalchemy import create_engine, select

from portal.db import normalise_url
from portal.models import Job, Order, OrderEvent, OrderState
from portal.sandbox.store import Store
from portal.sandbox.stripe_api import sign

pytestmark = [
    pytest.mark.postgres,
    # Only PostgreSQL: the `database_url` fixture skips, with its reason, when it is not configured.
    pytest.mark.parametrize("database_url", ["postgres"], indirect=True),
]

RACE_CLIENT = Path(__file__).with_name("race_client.py")
CARD = {"email": "ada@example.com", "card_number": "4242 4242 4242 4242", "expiry": "12/39"}


def buy_until_stripe_returns(base: str) -> tuple[str, str]:
    """Academy -> review -> pay -> the sandbox Stripe page -> card accepted. Returns the purchase
    id and the return URL Stripe sends the browser to (not followed)."""
    browser = requests.Session()
    review = browser.post(
        f"{base}/sandbox/skilljar/academy/checkout",
        data={"offer": "intro-python", "quantity": "1"},
        timeout=30,
    )
    assert review.status_code == 200, review.text
    purchase_id = parse_qs(urlsplit(review.url).query)["purchase_id"][0]
    action = re.search(r'action="([^"]+/pay)"', review.text).group(1)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(
        base + action, data={"csrf_token": token}, allow_redirects=False, timeout=30
    )
    assert to_stripe.status_code == 303, to_stripe.text
    paid = browser.post(
        to_stripe.headers["Location"],
        data={**CARD, "cvc": "123"},
        allow_redirects=False,
        timeout=30,
    )
    assert paid.status_code == 303, paid.text
    return purchase_id, paid.headers["Location"]


def fulfil_calls(store: Store, purchase_id: str) -> list[dict]:
    path = f"/sandbox/skilljar/v1/purchases/{purchase_id}/fulfill"
    return [c for c in store.calls("skilljar") if c["method"] == "POST" and c["path"] == path]


def successes(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["status"] == 200 and json.loads(c["body"])["state"] == "SUCCESS"]


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


def order_for(engine, purchase_id: str) -> Order | None:
    with engine.connect() as connection:
        return connection.execute(
            select(Order.__table__).where(Order.platform_ref == purchase_id)
        ).first()


def fulfil_job(engine, order_id: int):
    with engine.connect() as connection:
        return connection.execute(
            select(Job.__table__).where(Job.dedupe_key == f"fulfil:{order_id}")
        ).first()


def finished_fulfil_job(engine, order_id: int):
    """The fulfil job once its worker has let it go. The worker commits the order's move to
    FULFILLED first and releases the job in a transaction of its own just after (a worker that
    dies between the two leaves a job that, run again, finds the order fulfilled and calls
    nobody), so a test that saw the order fulfilled waits for that second commit."""
    return wait_until(
        lambda: (job := fulfil_job(engine, order_id)).locked_by is None and job,
        30,
        "the worker to release the fulfil job",
    )


@pytest.fixture
def portal_db(database_url):
    engine = create_engine(normalise_url(database_url))
    yield engine
    engine.dispose()


def control(base: str, **values) -> None:
    requests.post(f"{base}/sandbox/control", json=values, timeout=10).raise_for_status()


def race(specs: list[dict]) -> list[dict]:
    """Start one OS process per request, wait until each is ready, release them all at once."""
    racers = [
        subprocess.Popen(
            [sys.executable, str(RACE_CLIENT), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for spec in specs
    ]
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        outcomes = []
        for spec, racer in zip(specs, racers, strict=True):
            output, _ = racer.communicate(timeout=90)
            outcomes.append({"name": spec["name"], **json.loads(output)})
        return outcomes
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()


def test_four_returns_four_duplicate_webhooks_and_two_workers_fulfil_exactly_once(
    gunicorn_sandbox, portal_db
):
    """Two rounds on one paid session each: a platform that answers at once, and a slow one (the
    others arrive while the first fulfil call is still in flight)."""
    base = gunicorn_sandbox.url
    store = Store(gunicorn_sandbox.environment["PORTAL_SANDBOX_DATABASE_URL"])
    control(base, webhook_delay_seconds=-1)  # the racers deliver the webhook themselves
    gunicorn_sandbox.worker("--poll", "0.05")
    gunicorn_sandbox.worker("--poll", "0.05")
    for platform_latency_ms in (0, 400):
        control(base, skilljar_latency_ms=0)
        purchase_id, return_url = buy_until_stripe_returns(base)
        order = order_for(portal_db, purchase_id)
        assert order.state == OrderState.PAYING
        control(base, skilljar_latency_ms=platform_latency_ms)
        (event,) = [
            e
            for e in store.list("event")
            if e["type"] == "checkout.session.completed"
            and e["data"]["object"]["id"] == order.stripe_session_id
        ]
        payload = json.dumps(event)
        webhook = {
            "method": "POST",
            "url": f"{base}/webhooks/stripe",
            "body": payload,
            "headers": {
                "Content-Type": "application/json",
                "Stripe-Signature": sign(payload, "whsec_sandbox"),
            },
        }
        outcomes = race(
            [{"name": "return", "method": "GET", "url": return_url}] * 4
            + [{"name": "webhook", **webhook}] * 4
        )
        returns = [o for o in outcomes if o["name"] == "return"]
        webhooks = [o for o in outcomes if o["name"] == "webhook"]
        assert [o["status"] for o in webhooks] == [200] * 4, outcomes
        assert [o["status"] for o in returns] == [303] * 4, outcomes
        for outcome in returns:
            # Back to the academy, or to "payment received": never to a payment page again.
            location = outcome["location"]
            assert location.endswith((f"/thank-you/{purchase_id}", "/status")), location

        wait_until(
            lambda: order_for(portal_db, purchase_id).state == OrderState.FULFILLED,  # noqa: B023
            60,
            "the order to be fulfilled",
        )
        calls = fulfil_calls(store, purchase_id)
        assert len(successes(calls)) == 1
        assert len(calls) == 1  # not even a refused second attempt: nobody else tried
        job = finished_fulfil_job(portal_db, order.id)
        assert (job.state, job.attempts) == ("done", 1)
        with portal_db.connect() as connection:
            payments = connection.execute(
                select(OrderEvent.__table__).where(
                    OrderEvent.order_id == order.id, OrderEvent.kind == "payment"
                )
            ).all()
        assert len(payments) == 1  # one winner of `paying -> paid`


def test_worker_killed_mid_job_loses_nothing(gunicorn_sandbox, portal_db):
    """SIGKILL a worker while its Skilljar call is in flight. The call it made is lost (the
    stand-in is told to fail it); after the lease runs out a second worker takes the job and
    fulfils the order: exactly one SUCCESS."""
    base = gunicorn_sandbox.url
    store = Store(gunicorn_sandbox.environment["PORTAL_SANDBOX_DATABASE_URL"])
    gunicorn_sandbox.environment["PORTAL_JOB_LEASE_SECONDS"] = "3"  # for the workers started below
    purchase_id, _return_url = buy_until_stripe_returns(base)  # the learner never comes back
    order = wait_until(
        lambda: (o := order_for(portal_db, purchase_id)).state == OrderState.PAID and o,
        30,
        "the webhook to record the payment",
    )
    control(base, skilljar_latency_ms=2000)
    doomed = gunicorn_sandbox.worker("--poll", "0.05")

    def attempt_started():
        with portal_db.connect() as connection:
            return connection.execute(
                select(OrderEvent.__table__).where(
                    OrderEvent.order_id == order.id, OrderEvent.message == "fulfil attempt 1"
                )
            ).first()

    wait_until(attempt_started, 30, "the first worker to start the fulfil call")
    time.sleep(0.5)  # the call is now waiting on the (slow) platform
    doomed.send_signal(signal.SIGKILL)
    assert doomed.wait(10) == -signal.SIGKILL
    held = fulfil_job(portal_db, order.id)
    assert held.state == "queued"
    assert held.locked_by is not None  # still leased by the dead worker
    # The platform never completes the dead worker's call (it is still sleeping on the latency).
    control(base, skilljar_fault_rate=1.0)
    deadline = time.monotonic() + 5
    while not (orphans := fulfil_calls(store, purchase_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Normally [503]. [] if the worker died before its request left; [200] if the platform had
    # already answered it (only on a badly overloaded machine). Every case must end the same way.
    lost_in_flight = [c["status"] for c in orphans]
    assert lost_in_flight in ([503], [], [200])
    control(base, skilljar_fault_rate=0, skilljar_latency_ms=0)
    assert order_for(portal_db, purchase_id).state == OrderState.PAID

    gunicorn_sandbox.worker("--poll", "0.05")
    wait_until(
        lambda: order_for(portal_db, purchase_id).state == OrderState.FULFILLED,
        60,
        "the second worker to fulfil the order",
    )
    calls = fulfil_calls(store, purchase_id)
    assert len(successes(calls)) == 1
    if lost_in_flight == [200]:
        assert [c["status"] for c in calls] == [200]  # the retry saw SUCCESS and did not call
    else:
        assert [c["status"] for c in calls] == [*lost_in_flight, 200]  # the second worker did
    job = finished_fulfil_job(portal_db, order.id)
    assert (job.state, job.attempts, job.locked_by) == ("done", 2, None)
