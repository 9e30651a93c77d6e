"""The console's log of outbound merchant webhooks: the list with its filters, one delivery with
the payload and headers it sends (escaped, without the signing secret), an order's deliveries on
its page, and "Resend", which queues the same event again for the worker, audited, for the roles
that may act on orders only."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from markupsafe import escape
from sqlalchemy import select, update

from portal import jobs
from portal.admin import auth
from portal.api import keys, webhooks_out
from portal.db import db
from portal.models import (
    Job,
    JobState,
    Order,
    OrderState,
    Role,
    WebhookDelivery,
    WebhookEndpoint,
    utcnow,
)
from tests.admin_support import audit_entries, csrf, events, make_order
from tests.api_support import HOOK_URL, SampleReceiver, make_key

pytest_plugins = ["tests.admin_fixtures"]  # console, fast_hashing

OTHER_URL = "https://erp.beta.example/webhooks"
SCRIPT = "<script>alert(document.cookie)</script>"


@pytest.fixture
def acme(app):
    return make_key(name="Acme ERP")


@pytest.fixture
def beta(app):
    return make_key(name="Beta Shop", webhook_url=OTHER_URL, allowed_hosts=["beta.example"])


_made = iter(range(1, 10_000))


def merchant_order(key, **fields) -> Order:
    """An order made through the merchant API with `key`, as the checkout left it."""
    number = next(_made)
    values = {
        "state": OrderState.PAID,
        "platform": "merchant",
        "platform_ref": f"cs_merchant_{number}",
        "merchant_key_id": key.key.id,
        "capture_method": "automatic",
        "platform_data": {
            "items": [{"name": "Seat licence", "unit_amount": 4900, "quantity": 40}],
            "reference": f"SO-{number}",
            "metadata": {"erp_id": str(number)},
        },
    }
    values.update(fields)
    return make_order(**values)


def emit(app, order: Order, event_type: str = "order.paid", discriminator: str = "") -> str:
    """What the checkout core does when the order changes: queue the event for the key's
    endpoints."""
    settings = app.extensions["portal"].settings
    with db.transaction() as session:
        return webhooks_out.emit(session, settings, order, event_type, discriminator=discriminator)


def delivery(event_id: str) -> WebhookDelivery:
    with db.reader() as session:
        return session.scalar(select(WebhookDelivery).where(WebhookDelivery.event_id == event_id))


def set_delivery(event_id: str, **values) -> WebhookDelivery:
    with db.transaction() as session:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.event_id == event_id).values(**values)
        )
    return delivery(event_id)


def delivery_job(row: WebhookDelivery) -> Job:
    with db.reader() as session:
        return session.scalar(
            select(Job).where(Job.dedupe_key == webhooks_out.job_key(row.event_id, row.endpoint_id))
        )


def run_worker(app) -> dict[str, int]:
    """The worker's loop (claim what is due, run it) until nothing is due; without the periodic
    sweeps, which have nothing to do with these tests."""
    services = app.extensions["portal"]
    worker_id = jobs.worker_name()
    counts = {"done": 0, "retry": 0, "dead": 0, "lost": 0}
    for _ in range(20):
        claimed = jobs.claim_due(services.settings, worker_id, 10)
        if not claimed:
            break
        for job in claimed:
            counts[jobs.run_job(services, job, worker_id)] += 1
    return counts


def rows(page_html: str) -> list[str]:
    """The event ids in the delivery table, in the order shown."""
    body = (
        page_html.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page_html else ""
    )
    return re.findall(r'<span class="ref">(evt_[0-9a-f]{32})</span>', body)


def resend(client, delivery_id: int, *, confirm: bool = True):
    page = client.get(f"/admin/webhooks/{delivery_id}/resend")
    assert page.status_code == 200
    data = {"csrf_token": csrf(page.text)}
    if confirm:
        data["confirm"] = "y"
    return client.post(f"/admin/webhooks/{delivery_id}/resend", data=data)


# --- the list ----------------------------------------------------------------------------------


def test_the_log_lists_every_delivery_newest_first_with_what_an_operator_needs(
    app, console, acme, beta
):
    first = merchant_order(acme)
    second = merchant_order(beta)
    paid = emit(app, first, "order.paid")
    captured = emit(app, second, "order.captured")
    set_delivery(paid, state="delivered", attempts=1, last_status=200, delivered_at=utcnow())
    # Tried twice and waiting for its third try:
    set_delivery(captured, attempts=2, last_status=503, last_error="HTTP 503")

    client = console("operator")
    page = client.get("/admin/webhooks")
    assert page.status_code == 200
    text = page.text
    assert rows(text) == [captured, paid]
    assert "2 deliveries" in text
    for expected in (
        "order.paid",
        "order.captured",
        f'href="/admin/orders/{first.reference}"',
        f'href="/admin/orders/{second.reference}"',
        f'href="/admin/webhooks/{delivery(paid).id}"',
        "Acme ERP",
        acme.key.prefix,
        "Beta Shop",
        beta.key.prefix,
        HOOK_URL,
        OTHER_URL,
        "state-delivered",
        "state-retrying",
        "HTTP 200",
        "HTTP 503",
    ):
        assert expected in text, expected
    # The retrying delivery's next attempt is its job's due time; the delivered one has none.
    job = delivery_job(delivery(captured))
    assert job.state == JobState.QUEUED
    assert app.jinja_env.filters["admin_time"](job.run_at) in text
    for secret in (acme.secret, beta.secret, acme.endpoint.secret, beta.endpoint.secret):
        assert secret not in text


def test_the_console_navigation_links_the_log(console):
    page = console("operator").get("/admin/webhooks").text
    assert '<a href="/admin/webhooks" aria-current="page">Webhook deliveries</a>' in page
    assert 'href="/admin/webhooks"' in console("admin").get("/admin/dashboard").text
    assert 'href="/admin/webhooks"' not in console("marketer").get("/admin/branding").text


@pytest.fixture
def spread(app, acme, beta):
    """Deliveries in every state, for two keys, three orders and several event types."""
    one, two, three = merchant_order(acme), merchant_order(acme), merchant_order(beta)
    ids = {
        "pending": emit(app, one, "order.paid"),
        "retrying": emit(app, one, "order.refunded", "1000"),
        "delivered": emit(app, two, "order.paid"),
        "failed": emit(app, three, "order.cancelled"),
    }
    set_delivery(ids["retrying"], attempts=1, last_status=500, last_error="HTTP 500")
    set_delivery(ids["delivered"], state="delivered", attempts=1, last_status=200)
    set_delivery(ids["failed"], state="failed", attempts=3, last_error="endpoint disabled")
    return {"ids": ids, "orders": (one, two, three), "keys": (acme, beta)}


@pytest.mark.parametrize("state", ["pending", "retrying", "delivered", "failed"])
def test_filter_by_state(console, spread, state):
    page = console("operator").get(f"/admin/webhooks?state={state}")
    assert page.status_code == 200
    assert rows(page.text) == [spread["ids"][state]]


def test_filter_by_order_key_endpoint_event_type_and_event_id(console, spread):
    ids = spread["ids"]
    one, _two, three = spread["orders"]
    acme, beta = spread["keys"]
    client = console("operator")

    def shown(query: str) -> set[str]:
        page = client.get(f"/admin/webhooks?{query}")
        assert page.status_code == 200, page.text
        return set(rows(page.text))

    assert shown(f"order={one.reference}") == {ids["pending"], ids["retrying"]}
    assert shown(f"key={acme.key.id}") == {ids["pending"], ids["retrying"], ids["delivered"]}
    assert shown(f"key={beta.key.id}") == {ids["failed"]}
    assert shown(f"endpoint={beta.endpoint.id}") == {ids["failed"]}
    assert shown("event_type=order.paid") == {ids["pending"], ids["delivered"]}
    assert shown(f"event={ids['delivered']}") == {ids["delivered"]}
    assert shown(f"event_type=order.paid&key={acme.key.id}&state=delivered") == {ids["delivered"]}
    assert shown(f"order={three.reference}&state=delivered") == set()


def test_the_filter_form_is_labelled_and_keeps_its_values(console, spread):
    acme = spread["keys"][0]
    page = console("operator").get(f"/admin/webhooks?state=failed&key={acme.key.id}").text
    for name, label in (
        ("state", "State"),
        ("event_type", "Event type"),
        ("order", "Order reference"),
        ("event", "Event id"),
        ("key", "API key"),
        ("endpoint", "Endpoint"),
    ):
        assert f'<label for="{name}">{label}</label>' in page, name
    assert '<option selected value="failed">failed</option>' in page
    assert f'<option selected value="{acme.key.id}">Acme ERP · {acme.key.prefix}</option>' in page
    assert 'method="get"' in page


@pytest.mark.parametrize(
    "query",
    ["state=lost", "event_type=order.eaten", "key=99999", "endpoint=abc", "order=" + "x" * 41],
)
def test_a_bad_filter_is_a_400_that_says_so(console, query):
    page = console("operator").get(f"/admin/webhooks?{query}")
    assert page.status_code == 400
    assert "Please correct the filters marked above." in page.text


def test_empty_states(console, acme):
    client = console("operator")
    page = client.get("/admin/webhooks")
    assert page.status_code == 200
    assert "0 deliveries" in page.text
    assert "No deliveries yet." in page.text
    page = client.get("/admin/webhooks?state=failed")
    assert "No delivery matches these filters." in page.text


def test_the_log_is_paginated(app, console, acme):
    order = merchant_order(acme)
    made = [emit(app, order, "order.updated", str(n)) for n in range(53)]
    client = console("operator")
    first = client.get("/admin/webhooks?event_type=order.updated")
    assert "53 deliveries" in first.text
    assert rows(first.text) == made[::-1][:50]
    assert "Page 1 of 2" in first.text
    assert 'href="/admin/webhooks?page=2&amp;event_type=order.updated"' in first.text
    second = client.get("/admin/webhooks?event_type=order.updated&page=2")
    assert rows(second.text) == made[::-1][50:]
    beyond = client.get("/admin/webhooks?event_type=order.updated&page=99")
    assert rows(beyond.text) == made[::-1][50:]  # the last page


def test_endpoint_urls_and_errors_never_show_credentials(app, console):
    # Registering a URL with credentials is refused now (portal.urls); one registered before
    # that check, still in the database, must not show them either.
    leaky = make_key(name="Leaky", webhook_url="https://hooks.leaky.example/in")
    raw = "https://ops:hunter2pass@hooks.leaky.example/in?token=tok_s3cr3t"
    with db.transaction() as session:
        session.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == leaky.endpoint.id).values(url=raw)
        )
    order = merchant_order(leaky)
    evt = emit(app, order)
    row = set_delivery(
        evt, state="failed", attempts=3, last_error=f"webhook order.paid to {raw}: HTTP 500"
    )
    client = console("operator")
    for path in (
        "/admin/webhooks",
        f"/admin/webhooks/{row.id}",
        f"/admin/orders/{order.reference}",
    ):
        text = client.get(path).text
        assert "hooks.leaky.example/in" in text, path
        assert "hunter2pass" not in text, path
        assert "tok_s3cr3t" not in text, path
        assert leaky.endpoint.secret not in text, path


# --- one delivery ------------------------------------------------------------------------------


def test_the_detail_shows_the_payload_escaped_and_the_headers_without_the_secret(
    app, console, acme
):
    order = merchant_order(
        acme,
        customer_name=SCRIPT,
        platform_data={"items": [], "reference": "SO-9", "metadata": {"note": SCRIPT}},
    )
    evt = emit(app, order)
    row = delivery(evt)
    page = console("operator").get(f"/admin/webhooks/{row.id}")
    assert page.status_code == 200
    text = page.text
    assert "<script>" not in text
    assert escape(SCRIPT) in text
    # The pretty-printed payload is the body, indented.
    pretty = json.dumps(json.loads(row.body), indent=2, sort_keys=True, ensure_ascii=False)
    assert escape(pretty) in text
    assert "&#34;note&#34;: &#34;&lt;script&gt;" in text
    # The raw body too: the exact bytes that are signed.
    assert escape(row.body) in text
    for name, value in (
        ("Content-Type", "application/json"),
        ("User-Agent", webhooks_out.USER_AGENT),
        ("Portal-Event-Id", evt),
        ("Portal-Event-Type", "order.paid"),
    ):
        assert f'<th scope="row">{name}</th><td class="ref">{value}</td>' in text, name
    signature = re.search(
        r'<th scope="row">Portal-Signature</th><td class="ref">(t=\d+,v1=[0-9a-f]{64})</td>', text
    ).group(1)
    # A real signature of this body (a receiver can be checked against it), made here with the
    # endpoint's secret, which itself never reaches the page.
    assert webhooks_out.verify(acme.endpoint.secret, signature, row.body)
    assert acme.endpoint.secret not in text
    assert acme.secret not in text
    assert f'href="/admin/orders/{order.reference}"' in text
    assert "The log keeps the outcome of the latest attempt only" in text


@pytest.mark.parametrize(
    "path",
    [
        "/admin/webhooks/424242",
        "/admin/webhooks/0",
        "/admin/webhooks/99999999999999999999",  # past a 32-bit id: still a 404, never a 500
        "/admin/webhooks/abc",
        "/admin/webhooks/424242/resend",
    ],
)
def test_an_unknown_delivery_is_404(console, path):
    client = console("operator")
    assert client.get(path).status_code == 404
    token = csrf(client.get("/admin/webhooks").text) if "resend" in path else None
    if token:
        response = client.post(path, data={"csrf_token": token, "confirm": "y"})
        assert response.status_code == 404


# --- who may see and act -----------------------------------------------------------------------


def test_signed_out_visitors_are_sent_to_sign_in(app, acme):
    evt = emit(app, merchant_order(acme))
    row = delivery(evt)
    client = app.test_client()
    token = csrf(client.get("/admin/login").text)
    for path in (
        "/admin/webhooks",
        f"/admin/webhooks/{row.id}",
        f"/admin/webhooks/{row.id}/resend",
    ):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/admin/login?next=")
        assert evt not in response.text
    response = client.post(
        f"/admin/webhooks/{row.id}/resend", data={"csrf_token": token, "confirm": "y"}
    )
    assert response.status_code == 302
    assert response.headers["Location"] == "/admin/login"
    assert audit_entries("webhooks.resend") == []


def test_a_marketer_may_not_see_the_log(app, console, acme):
    row = delivery(emit(app, merchant_order(acme)))
    client = console("marketer")
    for path in (
        "/admin/webhooks",
        f"/admin/webhooks/{row.id}",
        f"/admin/webhooks/{row.id}/resend",
    ):
        response = client.get(path)
        assert response.status_code == 403, path
        assert row.event_id not in response.text


@pytest.fixture
def read_only(monkeypatch):
    """A role that may read orders but not act on them (none ships today: this proves the log
    follows the permissions, whatever roles they grant)."""
    monkeypatch.setitem(auth.PERMISSIONS, Role.OPERATOR, frozenset({"home", "dashboard", "orders"}))


def test_a_read_only_role_sees_deliveries_but_cannot_resend(app, console, acme, read_only):
    row = delivery(emit(app, merchant_order(acme)))
    set_delivery(row.event_id, state="failed", attempts=3, last_error="HTTP 500")
    job_before = delivery_job(row)
    client = console("operator")
    assert client.get("/admin/webhooks").status_code == 200
    page = client.get(f"/admin/webhooks/{row.id}")
    assert page.status_code == 200
    assert "/resend" not in page.text
    assert client.get(f"/admin/webhooks/{row.id}/resend").status_code == 403
    token = csrf(page.text)
    response = client.post(
        f"/admin/webhooks/{row.id}/resend", data={"csrf_token": token, "confirm": "y"}
    )
    assert response.status_code == 403
    assert delivery(row.event_id).state == "failed"
    job_after = delivery_job(row)
    assert (job_after.run_at, job_after.updated_at) == (job_before.run_at, job_before.updated_at)
    assert audit_entries("webhooks.resend") == []
    denied = audit_entries("access.denied")[-1]
    assert denied.detail["needs"] == "orders.act"


@pytest.mark.parametrize("role", ["operator", "admin"])
def test_the_roles_that_act_on_orders_may_resend(app, console, acme, role):
    row = delivery(emit(app, merchant_order(acme)))
    set_delivery(row.event_id, state="failed", attempts=3, last_error="HTTP 500")
    client = console(role)
    assert f'href="/admin/webhooks/{row.id}/resend"' in client.get(f"/admin/webhooks/{row.id}").text
    response = resend(client, row.id)
    assert response.status_code == 303
    assert delivery(row.event_id).state == "pending"


# --- resend ------------------------------------------------------------------------------------


def test_resend_queues_the_same_event_and_the_worker_delivers_it_signed(app, console, acme, mocked):
    receiver = SampleReceiver(mocked, acme.endpoint.secret)
    order = merchant_order(acme)
    evt = emit(app, order)
    assert run_worker(app)["done"] == 1
    row = delivery(evt)
    assert (row.state, row.attempts, row.last_status) == ("delivered", 1, 200)
    assert len(receiver.events) == 1

    client = console("operator")
    confirm = client.get(f"/admin/webhooks/{row.id}/resend")
    assert "I have checked the delivery and want it sent again" in confirm.text
    assert HOOK_URL in confirm.text
    # Not confirmed: nothing happens.
    unconfirmed = resend(client, row.id, confirm=False)
    assert unconfirmed.status_code == 400
    assert "Tick the box to confirm." in unconfirmed.text
    assert delivery(evt).state == "delivered"
    # Without the CSRF token: refused before anything happens.
    assert client.post(f"/admin/webhooks/{row.id}/resend", data={"confirm": "y"}).status_code == 400
    assert delivery(evt).state == "delivered"

    response = resend(client, row.id)
    assert response.status_code == 303
    assert response.headers["Location"] == f"/admin/webhooks/{row.id}"
    shown = client.get(response.headers["Location"]).text
    assert f"Event order.paid ({evt}) is queued to be sent to {HOOK_URL} again" in shown
    assert "state-pending" in shown

    again = delivery(evt)
    assert (again.id, again.state, again.attempts, again.last_status, again.delivered_at) == (
        row.id,
        "pending",
        0,
        None,
        None,
    )
    assert again.body == row.body
    job = delivery_job(again)
    assert (job.state, job.attempts, job.locked_by) == (JobState.QUEUED, 0, None)
    assert job.run_at <= utcnow()
    assert job.payload == {"event_id": evt, "endpoint_id": acme.endpoint.id}

    (entry,) = audit_entries("webhooks.resend")
    assert (entry.actor, entry.outcome, entry.target, entry.order_id) == (
        "operator@example.com",
        "ok",
        order.reference,
        order.id,
    )
    assert entry.detail == {
        "delivery": row.id,
        "event": evt,
        "event_type": "order.paid",
        "endpoint": HOOK_URL,
        "from_state": "delivered",
        "attempts": 1,
        "last_status": 200,
    }
    note = events(order, "operator")[-1]
    assert note.detail["action"] == "resend_webhook"
    assert note.message == (
        f"merchant event order.paid queued again for {HOOK_URL} (by operator@example.com)"
    )

    assert run_worker(app)["done"] == 1
    assert receiver.refused == 0  # the sample receiver checked the fresh signature
    assert len(receiver.events) == 2
    assert receiver.events[1] == receiver.events[0]  # the same event, the same id
    assert receiver.events[1]["id"] == evt
    (first_call, second_call) = [c.request for c in mocked.calls if c.request.url == HOOK_URL]
    assert second_call.headers["Portal-Event-Id"] == first_call.headers["Portal-Event-Id"] == evt
    assert webhooks_out.verify(
        acme.endpoint.secret, second_call.headers["Portal-Signature"], second_call.body.decode()
    )
    done = delivery(evt)
    assert (done.state, done.attempts, done.last_status) == ("delivered", 1, 200)
    assert delivery_job(done).state == JobState.DONE


def test_resend_of_a_given_up_delivery_gets_fresh_attempts(app, console, acme, mocked):
    receiver = SampleReceiver(mocked, acme.endpoint.secret)
    receiver.fail_next = 10
    evt = emit(app, merchant_order(acme))
    run_worker(app)  # RETRY_MAX_ATTEMPTS=3 and no back-off in the tests: gives up
    row = delivery(evt)
    assert (row.state, row.attempts) == ("failed", 3)
    assert delivery_job(row).state == JobState.DEAD
    page = console("operator").get(f"/admin/webhooks/{row.id}").text
    assert "state-failed" in page
    assert "HTTP 500" in page

    receiver.fail_next = 1  # the merchant fixed their receiver, almost
    client = console("operator")
    assert resend(client, row.id).status_code == 303
    run_worker(app)
    done = delivery(evt)
    assert (done.state, done.attempts, done.last_status) == ("delivered", 2, 200)
    assert [event["id"] for event in receiver.events] == [evt]


def test_resend_makes_a_backed_off_delivery_due_now(app, console, acme):
    row = delivery(emit(app, merchant_order(acme)))
    set_delivery(row.event_id, attempts=2, last_status=502, last_error="HTTP 502")
    later = utcnow() + timedelta(hours=1)
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.dedupe_key == webhooks_out.job_key(row.event_id, row.endpoint_id))
            .values(run_at=later, attempts=2, last_error="HTTP 502")
        )
    page = console("operator").get("/admin/webhooks?state=retrying").text
    assert rows(page) == [row.event_id]
    assert app.jinja_env.filters["admin_time"](later) in page
    assert resend(console("operator"), row.id).status_code == 303
    job = delivery_job(row)
    assert job.run_at <= utcnow()
    assert (job.attempts, job.last_error) == (0, None)
    assert delivery(row.event_id).attempts == 0


def test_resend_is_refused_while_a_worker_is_sending_it(app, console, acme):
    row = delivery(emit(app, merchant_order(acme)))
    with db.transaction() as session:
        session.execute(
            update(Job)
            .where(Job.dedupe_key == webhooks_out.job_key(row.event_id, row.endpoint_id))
            .values(locked_by="other-host:1:1", locked_until=utcnow() + timedelta(minutes=2))
        )
    client = console("operator")
    assert "sending now" in client.get(f"/admin/webhooks/{row.id}").text
    response = resend(client, row.id)
    assert response.status_code == 303
    assert (
        "A worker is sending this delivery right now"
        in client.get(response.headers["Location"]).text
    )
    assert delivery_job(row).locked_by == "other-host:1:1"
    (entry,) = audit_entries("webhooks.resend")
    assert entry.outcome == "refused"


def test_resend_is_refused_when_the_key_was_revoked(app, console, acme):
    row = delivery(emit(app, merchant_order(acme)))
    set_delivery(row.event_id, state="failed", attempts=1, last_error="endpoint disabled")
    keys.revoke_key(acme.key.prefix)
    client = console("operator")
    page = client.get(f"/admin/webhooks/{row.id}").text
    assert "(revoked)" in page
    assert "/resend" not in page  # not offered
    response = resend(client, row.id)
    text = client.get(response.headers["Location"]).text
    assert "The endpoint is disabled (its API key was revoked)" in text
    assert delivery(row.event_id).state == "failed"
    assert delivery_job(row).state == JobState.QUEUED  # as emit left it: nothing changed
    (entry,) = audit_entries("webhooks.resend")
    assert (entry.outcome, entry.detail["delivery"]) == ("refused", row.id)


# --- the order page ----------------------------------------------------------------------------


def test_the_order_page_lists_the_orders_deliveries(app, console, acme, beta):
    order = merchant_order(acme)
    other = merchant_order(acme)
    paid = emit(app, order, "order.paid")
    refunded = emit(app, order, "order.refunded", "500")
    elsewhere = emit(app, other, "order.paid")
    set_delivery(paid, state="delivered", attempts=1, last_status=200)
    page = console("operator").get(f"/admin/orders/{order.reference}").text
    section = page.split('id="deliveries-heading"', 1)[1].split("</section>", 1)[0]
    assert rows("<tbody>" + section.split("<tbody>", 1)[1]) == [refunded, paid]
    assert elsewhere not in section
    assert f'href="/admin/webhooks/{delivery(paid).id}"' in section
    assert f'href="/admin/webhooks?order={order.reference}"' in section
    assert "state-delivered" in section
    assert "state-pending" in section
    assert acme.endpoint.secret not in page


def test_the_order_page_says_when_a_merchant_order_has_no_deliveries(console, acme):
    order = merchant_order(acme)
    page = console("operator").get(f"/admin/orders/{order.reference}").text
    assert "Webhook deliveries" in page
    assert "No webhook deliveries for this order yet." in page


def test_orders_from_other_platforms_have_no_webhook_section(console):
    order = make_order()  # Skilljar: no merchant key, no merchant webhooks
    page = console("operator").get(f"/admin/orders/{order.reference}").text
    assert 'id="deliveries-heading"' not in page
