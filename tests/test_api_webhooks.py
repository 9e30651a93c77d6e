"""Outbound webhooks: signed over `timestamp.body` with the endpoint's secret (checked here by a
sample receiver written the way a merchant would), delivered from the job queue, retried with
back-off, logged for the console, and never sent twice for one happening."""

from __future__ import annotations

import json
import time

import pytest

from portal.api import queries, webhooks_out
from portal.api.schema import validator
from tests.api_support import (
    ApiClient,
    SampleReceiver,
    authorise,
    deliveries,
    make_key,
    queued,
    run_queued,
    session_body,
    verify_signature,
)
from tests.conftest import STRIPE_BASE


@pytest.fixture
def key(app):
    return make_key()


@pytest.fixture
def api(client, key):
    return ApiClient(client, key.secret)


@pytest.fixture
def receiver(mocked, key):
    return SampleReceiver(mocked, key.endpoint.secret)


def paid_order(app, api, mocked, manual=False) -> dict:
    body = session_body(capture_method="manual" if manual else "automatic")
    order = api.post("/checkout-sessions", body).json["order"]
    authorise(app, mocked, order["id"], manual=manual, stripe_base=STRIPE_BASE)
    return order


def test_events_are_signed_and_the_sample_receiver_accepts_them(app, api, mocked, receiver):
    order = paid_order(app, api, mocked)
    assert run_queued(app, "webhook_delivery") == 1
    assert receiver.refused == 0
    (event,) = receiver.events
    assert event["type"] == "order.paid"
    assert event["object"] == "event"
    assert event["livemode"] is False
    assert event["data"]["object"]["id"] == order["id"]
    assert event["data"]["object"]["status"] == "paid"
    assert not list(validator("Event").iter_errors(event))  # the documented event shape
    (delivery,) = deliveries()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 200)


def test_a_wrong_secret_or_a_changed_body_fails_verification(app, api, mocked, key):
    receiver = SampleReceiver(mocked, "whsec_someone_else")
    paid_order(app, api, mocked)
    run_queued(app, "webhook_delivery")
    assert receiver.refused == 1
    assert receiver.events == []
    (delivery,) = deliveries()
    body = delivery.body
    header = webhooks_out.sign(key.endpoint.secret, int(time.time()), body)
    assert verify_signature(key.endpoint.secret, header, body.encode())
    assert not verify_signature(key.endpoint.secret, header, body.replace("paid", "PAID").encode())
    old = webhooks_out.sign(key.endpoint.secret, int(time.time()) - 600, body)
    assert not verify_signature(key.endpoint.secret, old, body.encode())
    assert webhooks_out.verify(key.endpoint.secret, header, body)
    assert not webhooks_out.verify(key.endpoint.secret, old, body)


def test_failed_delivery_is_retried_with_the_same_event(app, api, mocked, receiver):
    paid_order(app, api, mocked)
    receiver.fail_next = 1
    run_queued(app, "webhook_delivery")
    (delivery,) = deliveries()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("pending", 1, 500)
    (job,) = queued("webhook_delivery")
    assert job.last_error
    assert "HTTP 500" in job.last_error
    run_queued(app, "webhook_delivery")  # RETRY_BASE_SECONDS=0 in tests: due again at once
    (delivery,) = deliveries()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    assert len(receiver.events) == 1


def test_delivery_gives_up_after_the_last_attempt_and_the_log_says_so(app, api, mocked, receiver):
    paid_order(app, api, mocked)
    receiver.fail_next = 10
    for _ in range(5):
        run_queued(app, "webhook_delivery")
    (delivery,) = deliveries()
    assert delivery.state == "failed"
    assert delivery.attempts == 3  # RETRY_MAX_ATTEMPTS in the tests
    (row,) = queries.recent_deliveries(10, state="failed")
    assert row.event_type == "order.paid"
    assert row.endpoint_url == "https://hooks.example.com/portal"
    assert row.api_key_prefix.startswith("sk_test_")
    assert row.order_reference == delivery_order(delivery)


def delivery_order(delivery) -> str:
    return json.loads(delivery.body)["data"]["object"]["id"]


def test_each_happening_is_one_event_even_if_emitted_twice(app, api, mocked, receiver):
    order = paid_order(app, api, mocked)
    services = app.extensions["portal"]
    from portal.db import db
    from tests.api_support import order_row

    row = order_row(order["id"])
    with db.transaction() as session:
        webhooks_out.emit(session, services.settings, row, "order.paid")
    assert len(deliveries()) == 1
    assert len(queued("webhook_delivery")) == 1


def test_every_state_change_reaches_the_merchant(app, api, mocked, receiver):
    order = paid_order(app, api, mocked, manual=True)
    pi = f"pi_{order['id'][-8:]}"
    mocked.post(
        f"{STRIPE_BASE}/v1/payment_intents/{pi}/capture",
        json={"id": pi, "status": "succeeded", "amount_received": 221000},
    )
    api.post(f"/orders/{order['id']}/capture", {})
    mocked.post(f"{STRIPE_BASE}/v1/refunds", json={"id": "re_9", "status": "succeeded"})
    api.post("/refunds", {"order": order["id"], "amount": 1000})
    run_queued(app, "webhook_delivery")
    assert receiver.types() == ["order.authorized", "order.captured", "order.refunded"]
    assert receiver.events[-1]["data"]["refund"]["amount"] == 1000
    assert [r.event_type for r in queries.recent_deliveries(10)] == [
        "order.refunded",
        "order.captured",
        "order.authorized",
    ]


def test_a_revoked_key_gets_no_more_webhooks(app, api, mocked, receiver, key):
    from portal.api import keys

    paid_order(app, api, mocked)
    keys.revoke_key(key.key.prefix)
    run_queued(app, "webhook_delivery")
    assert receiver.events == []
    (delivery,) = deliveries()
    assert delivery.state == "failed"
    assert delivery.last_error == "endpoint disabled"
    assert queued("webhook_delivery") == []  # finished, not waiting to retry
