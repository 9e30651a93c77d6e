"""The stand-ins' store and hot paths: what the sandbox store keeps and answers, controls set
anywhere hold at once, idempotency keys answer once, concurrent writers lose nothing, and the
Stripe stand-in's memoised parameter checks report what the SDK's annotations say."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
from typing import Literal, NotRequired, TypedDict

import pytest
from sqlalchemy.exc import IntegrityError

from portal.sandbox import store as store_module
from portal.sandbox.store import Store
from portal.sandbox.stripe_api import StripeInputError, check_params


def exercise(store: Store) -> list:
    """The same calls on either path; what they return."""
    answers = []
    store.put("charge", "ch_1", {"id": "ch_1", "amount": 100, "created": 1_700_000_000})
    store.put("charge", "ch_1", {"id": "ch_1", "amount": 50, "created": 1_700_000_099})
    store.put("charge", "ch_2", {"id": "ch_2", "nested": {"a": [1, 2, None]}, "text": "é ✓"})
    session = {"id": "cs_1", "object": "checkout.session", "created": 1_700_000_001}
    store.write([("checkout.session", "cs_1", session)], remember=("key-1", "h1", session, 200))
    store.write([("refund", "re_1", {"id": "re_1"}), ("charge", "ch_2", {"id": "ch_2", "x": 1})])
    store.log_call("skilljar", "GET", "/v1/purchases/p1", None, 200)
    store.log_call("skilljar", "PUT", "/v1/purchases/p1", '{"state": "X"}', 400)
    store.set_control("skilljar_latency_ms", 200.0)
    store.set_control("skilljar_latency_ms", 0.0)
    store.set_control("stripe_latency_ms", 12.5)
    answers.append(store.get("charge", "ch_1"))
    answers.append(store.get("charge", "ch_2"))
    answers.append(store.get("charge", "nope"))
    answers.append(store.list("charge"))
    answers.append(tuple(store.remembered("key-1")))
    answers.append(store.remembered("key-2"))
    answers.append(store.control("stripe_latency_ms", 1.0))
    answers.append(store.control("webhook_delay_seconds", -1.0))
    answers.append(store.controls({"skilljar_latency_ms": 5.0, "skilljar_fault_rate": 0.25}))
    answers.append([{k: v for k, v in c.items() if k != "at"} for c in store.calls("skilljar")])
    return answers


def test_the_store_keeps_and_answers_what_was_written(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module.time, "time", lambda: 1_750_000_000.5)
    store = Store(f"sqlite:///{tmp_path / 'sandbox.db'}")
    answers = exercise(store)
    assert answers[0] == {"id": "ch_1", "amount": 50, "created": 1_700_000_099}
    assert answers[1] == {"id": "ch_2", "x": 1}
    assert answers[2] is None
    assert [c["id"] for c in answers[3]] == ["ch_2", "ch_1"]  # newest first
    assert answers[4][:2] == ("key-1", "h1")
    assert answers[5] is None
    assert (answers[6], answers[7]) == (12.5, -1.0)
    assert answers[8] == {"skilljar_latency_ms": 0.0, "skilljar_fault_rate": 0.25}
    assert [(c["method"], c["status"], c["body"]) for c in answers[9]] == [
        ("GET", 200, None),
        ("PUT", 400, '{"state": "X"}'),
    ]
    assert len(store.list("refund")) + len(store.list("charge")) == 3
    assert store.calls("skilljar")[0]["at"] == 1_750_000_000.5


def test_an_idempotency_key_keeps_its_first_answer(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sandbox.db'}")
    first = {"id": "cs_1", "created": 1}
    store.write([("checkout.session", "cs_1", first)], remember=("k", "h", first, 200))
    second = {"id": "cs_2", "created": 2}
    with pytest.raises(IntegrityError):
        store.write([("checkout.session", "cs_2", second)], remember=("k", "h2", second, 200))
    assert store.get("checkout.session", "cs_2") is None  # the losing write left nothing
    assert store.remembered("k").request_hash == "h"
    store.put("checkout.session", "cs_3", {"id": "cs_3"})  # the connection is usable again
    assert store.get("checkout.session", "cs_3") == {"id": "cs_3"}


def test_a_control_set_by_another_process_holds_at_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'sandbox.db'}"
    store = Store(url)
    assert store.control("skilljar_fault_rate", 0.0) == 0.0
    script = (
        "import sys; from portal.sandbox.store import Store; "
        "Store(sys.argv[1]).set_control('skilljar_fault_rate', 0.75)"
    )
    subprocess.run([sys.executable, "-c", script, url], check=True, timeout=60)
    assert store.control("skilljar_fault_rate", 0.0) == 0.75
    assert store.controls({"skilljar_fault_rate": 0.0, "skilljar_latency_ms": 3.0}) == {
        "skilljar_fault_rate": 0.75,
        "skilljar_latency_ms": 3.0,
    }


def test_concurrent_writers_lose_nothing(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sandbox.db'}")

    def writer(number: int):
        for index in range(50):
            store.log_call("skilljar", "GET", f"/{number}/{index}", None, 200)
            body = {"id": f"{number}-{index}", "created": index + 1}
            store.write([("thing", body["id"], body)], remember=(body["id"], "h", body, 200))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(store.calls("skilljar")) == 400
    assert len(store.list("thing")) == 400


class Params(TypedDict, total=False):
    first: Literal["a", "b"]
    second: Literal["b", "a"]  # equal to the first's annotation (==, same hash), in another order
    third: NotRequired[Literal["c"]]


@pytest.mark.parametrize(
    ("params", "message", "param"),
    [
        ({"first": "c"}, "Invalid first: must be one of a, b", "first"),
        ({"second": "c"}, "Invalid second: must be one of b, a", "second"),
        ({"first": "a", "bogus": "1"}, "Received unknown parameter: bogus", "bogus"),
        ({"second": "a", "api_key": "sk"}, "Received unknown parameter: api_key", "api_key"),
        ({"third": "d"}, "Invalid third: must be one of c", "third"),
    ],
)
def test_parameter_checks_keep_each_annotations_own_order(params, message, param):
    for _ in range(2):  # worked out, then memoised: the same answer
        with pytest.raises(StripeInputError) as raised:
            check_params(params, Params, "")
        assert (raised.value.message, raised.value.param) == (message, param)
    check_params({"first": "b", "second": "a"}, Params, "")


# --- through the stand-ins' routes ---------------------------------------------------------------


@pytest.fixture
def sandbox_app(make_app, tmp_path):
    return make_app(
        SANDBOX="1",
        PUBLIC_URL="http://127.0.0.1:5999",  # the sandbox's own pages are plain HTTP on loopback
        SANDBOX_DATABASE_URL=f"sqlite:///{tmp_path / 'sandbox.db'}",
        SANDBOX_WEBHOOK_DELAY_SECONDS="-1",
    )


def session_form(**overrides) -> dict:
    return {
        "mode": "payment",
        "line_items[0][quantity]": "1",
        "line_items[0][price_data][currency]": "usd",
        "line_items[0][price_data][unit_amount]": "4900",
        "line_items[0][price_data][product_data][name]": "Introduction to Python",
        "metadata[order_reference]": "ord_1",
        "payment_intent_data[metadata][order_reference]": "ord_1",
        "success_url": "http://portal.test/return?session_id={CHECKOUT_SESSION_ID}",
        "cancel_url": "http://portal.test/cancel",
        "locale": "auto",
        **overrides,
    }


def test_session_create_is_stored_remembered_and_replayed(sandbox_app):
    client = sandbox_app.test_client()
    store = sandbox_app.extensions["sandbox_store"]
    key = sandbox_app.config["PORTAL"].stripe_secret_key
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "idem-1"}
    first = client.post(
        "/sandbox/stripe/v1/checkout/sessions", data=session_form(), headers=headers
    )
    assert first.status_code == 200, first.text
    session = first.get_json()
    assert store.get("checkout.session", session["id"]) == session
    again = client.post(
        "/sandbox/stripe/v1/checkout/sessions", data=session_form(), headers=headers
    )
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == session
    other = client.post(
        "/sandbox/stripe/v1/checkout/sessions", data=session_form(locale="fr"), headers=headers
    )
    assert other.status_code == 400
    assert other.get_json()["error"]["code"] == "idempotency_error"
    unknown = client.post(
        "/sandbox/stripe/v1/checkout/sessions",
        data=session_form(**{"line_items[0][price_data][bogus]": "1"}),
        headers={"Authorization": f"Bearer {key}"},
    )
    assert unknown.status_code == 400
    assert unknown.get_json()["error"] == {
        "type": "invalid_request_error",
        "message": "Received unknown parameter: line_items[0][price_data][bogus]",
        "param": "line_items[0][price_data][bogus]",
    }
    assert len(store.list("checkout.session")) == 1


def test_purchase_lookup_answers_the_stored_purchase_and_is_logged(sandbox_app):
    from portal.sandbox import skilljar_api

    client = sandbox_app.test_client()
    store = sandbox_app.extensions["sandbox_store"]
    with sandbox_app.test_request_context():
        purchase = skilljar_api.new_purchase("intro-python", 2, "LAUNCH20")
    api_key = sandbox_app.config["PORTAL"].skilljar_api_key
    auth = {"Authorization": "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()}
    path = f"/sandbox/skilljar/v1/purchases/{purchase['id']}"
    answer = client.get(path, headers=auth)
    assert answer.status_code == 200
    assert answer.get_json() == {k: v for k, v in purchase.items() if k != "created"}
    assert client.get(path).status_code == 401
    call = store.calls("skilljar")[-2]
    assert (call["method"], call["path"], call["body"], call["status"]) == ("GET", path, None, 200)
    client.post("/sandbox/control", json={"skilljar_fault_rate": 1})
    refused = client.put(path, json={"tax_price_cents": 1}, headers=auth)
    assert refused.status_code == 503  # the control holds at once in the process that set it
    assert client.get(path, headers=auth).status_code == 200  # reads are never faulted
