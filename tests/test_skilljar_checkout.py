"""Skilljar remote checkout with Stripe and Skilljar stood in by `responses`: the exact requests
the portal sends, and what the learner sees for every good and bad case."""

from __future__ import annotations

import base64
import json
import re
import time
from urllib.parse import parse_qsl, unquote

import pytest
import requests
import responses
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from portal import orders
from portal.db import db
from portal.models import Job, Order, OrderEvent, OrderState
from tests.conftest import SKILLJAR_BASE, STRIPE_BASE

PURCHASE_URL = f"{SKILLJAR_BASE}/v1/purchases/p1abc"
SESSIONS_URL = f"{STRIPE_BASE}/v1/checkout/sessions"
BASIC = "Basic " + base64.b64encode(b"sj-unit-key:").decode()


def form(body) -> dict:
    return dict(parse_qsl(body if isinstance(body, str) else body.decode()))


def csrf(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def order_row() -> Order:
    with db.reader() as session:
        return session.scalar(select(Order))


def open_review(client, mocked, purchase, **purchase_fields):
    mocked.get(PURCHASE_URL, json=purchase(**purchase_fields))
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 200, response.text
    return response


def pay(client, mocked, html, checkout_session, **form_fields):
    order = order_row()
    session = checkout_session(client_reference_id=order.reference)
    mocked.post(SESSIONS_URL, json=session)
    return client.post(
        f"/orders/{order.reference}/pay", data={"csrf_token": csrf(html), **form_fields}
    )


# --- the review page ------------------------------------------------------------------------------


def test_review_page_shows_the_authoritative_purchase(client, mocked, purchase):
    response = open_review(client, mocked, purchase)
    request = mocked.calls[0].request
    assert request.method == "GET"
    assert request.url == PURCHASE_URL
    assert request.headers["Authorization"] == BASIC
    text = response.text
    for expected in (
        "Introduction to Python",
        "PY-101",
        "LAUNCH20",
        "$49.00",
        "−$19.60",
        "$78.40",
        'name="csrf_token"',
        "Pay $78.40",
    ):
        assert expected in text
    # No outgoing mail here: no receipt can be sent, so none is promised (test_receipts.py).
    assert "Your receipt will be sent" not in text
    assert "Content-Security-Policy" in response.headers
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_review_formats_money_in_the_learners_locale(client, mocked, purchase):
    mocked.get(
        PURCHASE_URL,
        json=purchase(currency_code="EUR", price_cents=123456, promo_code="", quantity=1),
    )
    response = client.get(
        "/skilljar/checkout?purchase_id=p1abc", headers={"Accept-Language": "de-DE,de;q=0.9"}
    )
    assert "1.234,56\xa0€" in response.text


def test_zero_decimal_currency_is_not_divided(client, mocked, purchase):
    mocked.get(
        PURCHASE_URL,
        json=purchase(
            currency_code="JPY", price_cents=8800, quantity=1, promo_code="", offer_price_cents=8800
        ),
    )
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert "¥8,800" in response.text


@pytest.mark.parametrize("purchase_id", ["", "../x", "ABC", "p1%20x", "p1abc/fulfill", "a" * 65])
def test_malformed_purchase_ids_are_refused_before_any_call(client, mocked, purchase_id):
    response = client.get(f"/skilljar/checkout?purchase_id={purchase_id}")
    assert response.status_code == 400
    assert "not valid" in response.text
    assert len(mocked.calls) == 0


def test_missing_purchase_id_is_a_clear_400(client, mocked):
    response = client.get("/skilljar/checkout")
    assert response.status_code == 400
    assert "Proceed to Checkout" in response.text


def test_unknown_purchase_is_404(client, mocked):
    mocked.get(PURCHASE_URL, json={"detail": "Not found."}, status=404)
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 404
    assert "could not find this purchase" in response.text
    assert order_row() is None


@pytest.mark.parametrize(
    "state", ["SUCCESS", "FAILED", "REFUNDED", "CANCELLED", "FLAGGED", "PENDING"]
)
def test_purchase_not_created_cannot_be_paid(client, mocked, purchase, state):
    mocked.get(PURCHASE_URL, json=purchase(state=state))
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 409
    assert "can no longer be paid" in response.text
    assert not any(c.request.url.startswith(STRIPE_BASE) for c in mocked.calls)


@pytest.mark.parametrize(
    ("status", "body"),
    [(401, {"detail": "Invalid API key."}), (500, {"detail": "boom"}), (503, {})],
)
def test_skilljar_errors_are_a_branded_503(client, mocked, status, body):
    mocked.get(PURCHASE_URL, json=body, status=status)
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 503
    assert "temporarily unavailable" in response.text
    assert "Traceback" not in response.text
    assert order_row() is None


def test_skilljar_timeout_is_a_branded_503(client, mocked):
    mocked.get(PURCHASE_URL, body=requests.Timeout("read timed out"))
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 503
    assert "you have not been charged" in response.text


def test_malformed_purchase_amount_is_refused(client, mocked, purchase):
    mocked.get(PURCHASE_URL, json=purchase(price_cents="78.40"))
    response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 502
    assert order_row() is None


# --- paying ---------------------------------------------------------------------------------------


def order_events() -> list[tuple[str, str]]:
    with db.reader() as session:
        rows = session.execute(select(OrderEvent.kind, OrderEvent.message).order_by(OrderEvent.id))
        return [tuple(row) for row in rows]


def test_the_create_call_is_in_the_timeline_with_the_state_change(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    assert pay(client, mocked, review.text, checkout_session).status_code == 303
    assert order_events()[-2:] == [
        ("http", "STRIPE checkout.sessions.create -> 200"),
        ("state", "-> paying"),
    ]


def test_a_failed_create_call_is_in_the_timeline(client, mocked, purchase):
    review = open_review(client, mocked, purchase)
    mocked.post(SESSIONS_URL, json={"error": {"type": "invalid_request_error"}}, status=400)
    reference = order_row().reference
    response = client.post(f"/orders/{reference}/pay", data={"csrf_token": csrf(review.text)})
    assert response.status_code == 503
    assert order_events()[-1] == ("http", "STRIPE checkout.sessions.create -> 400")
    assert order_row().state == OrderState.OPEN


def test_the_create_call_stays_in_the_timeline_when_its_transaction_fails(
    client, mocked, purchase, checkout_session, monkeypatch
):
    review = open_review(client, mocked, purchase)

    def lost_database(*args, **kwargs):
        raise OperationalError("UPDATE orders", {}, Exception("connection lost"))

    monkeypatch.setattr(orders, "move", lost_database)
    response = pay(client, mocked, review.text, checkout_session)
    assert response.status_code == 503
    assert "Traceback" not in response.text
    assert order_events()[-1] == ("http", "STRIPE checkout.sessions.create -> 200")
    assert order_row().state == OrderState.OPEN


def test_pay_creates_one_checkout_session_from_the_platform_amounts(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    response = pay(client, mocked, review.text, checkout_session)
    assert response.status_code == 303
    assert response.headers["Location"] == "https://checkout.stripe.test/c/pay/cs_test_1"
    coupon, create = (c.request for c in mocked.calls[-2:])
    assert create.method == "POST"
    assert create.url == SESSIONS_URL
    assert create.headers["Authorization"] == "Bearer sk_test_unit"
    order = order_row()
    assert create.headers["Idempotency-Key"] == f"{order.reference}-attempt-1"
    # What the review page showed: 2 seats at $49.00, less LAUNCH20's $19.60, $78.40 to pay.
    assert coupon.url == f"{STRIPE_BASE}/v1/coupons"
    assert coupon.headers["Idempotency-Key"] == f"{order.reference}-attempt-1-coupon"
    assert form(coupon.body) == {
        "amount_off": "1960",
        "currency": "usd",
        "duration": "once",
        "max_redemptions": "1",
        "name": "LAUNCH20",
        "metadata[order_reference]": order.reference,
    }
    body = form(create.body)
    assert body["mode"] == "payment"
    assert body["line_items[0][quantity]"] == "2"
    assert body["line_items[0][price_data][currency]"] == "usd"
    assert body["line_items[0][price_data][unit_amount]"] == "4900"
    assert body["discounts[0][coupon]"] == "co_test_1"
    assert body["line_items[0][price_data][product_data][name]"] == "Introduction to Python"
    assert "line_items[1][price_data][unit_amount]" not in body
    assert body["customer_email"] == "learner@example.com"
    assert body["client_reference_id"] == order.reference
    assert body["metadata[order_reference]"] == order.reference
    assert body["payment_intent_data[metadata][order_reference]"] == order.reference
    assert body["success_url"] == (
        f"http://portal.test/orders/{order.reference}/return?session_id={{CHECKOUT_SESSION_ID}}"
    )
    assert body["cancel_url"] == f"http://portal.test/orders/{order.reference}/cancelled"
    assert 31 * 60 < int(body["expires_at"]) - time.time() <= 24 * 3600
    assert body["locale"] == "en"  # no Accept-Language: the default locale
    assert order.state == OrderState.PAYING
    assert order.stripe_session_id == "cs_test_1"


def test_stripe_locale_follows_the_learner(client, mocked, purchase, checkout_session):
    mocked.get(PURCHASE_URL, json=purchase())
    review = client.get(
        "/skilljar/checkout?purchase_id=p1abc", headers={"Accept-Language": "fr-CA,fr;q=0.8"}
    )
    pay(client, mocked, review.text, checkout_session)
    assert form(mocked.calls[-1].request.body)["locale"] == "fr-CA"


def test_tampered_form_fields_change_nothing(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(
        client,
        mocked,
        review.text,
        checkout_session,
        amount="1",
        amount_minor="1",
        currency="jpy",
        quantity="100",
        price_cents="1",
    )
    body = form(mocked.calls[-1].request.body)
    assert body["line_items[0][price_data][unit_amount]"] == "4900"
    assert body["line_items[0][quantity]"] == "2"
    assert body["line_items[0][price_data][currency]"] == "usd"
    assert order_row().amount_minor == 7840
    assert order_row().quantity == 2


def test_pay_without_csrf_token_is_refused(client, mocked, purchase):
    open_review(client, mocked, purchase)
    response = client.post(f"/orders/{order_row().reference}/pay")
    assert response.status_code == 400
    assert "expired" in response.text
    assert not any(c.request.url.startswith(STRIPE_BASE) for c in mocked.calls)


def test_double_click_reuses_the_open_session(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    first = pay(client, mocked, review.text, checkout_session)
    order = order_row()
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1", json=checkout_session(client_reference_id=order.reference)
    )
    second = client.post(f"/orders/{order.reference}/pay", data={"csrf_token": csrf(review.text)})
    assert second.headers["Location"] == first.headers["Location"]
    creates = [c for c in mocked.calls if c.request.url == SESSIONS_URL]
    assert len(creates) == 1


def test_revisiting_the_purchase_reuses_the_order(client, mocked, purchase):
    open_review(client, mocked, purchase)
    open_review(client, mocked, purchase)
    with db.reader() as session:
        assert session.scalar(select(func.count()).select_from(Order)) == 1


def test_stripe_outage_at_pay_is_a_503_and_the_order_stays_open(client, mocked, purchase):
    review = open_review(client, mocked, purchase)
    mocked.post(SESSIONS_URL, json={"error": {"type": "api_error", "message": "down"}}, status=500)
    response = client.post(
        f"/orders/{order_row().reference}/pay", data={"csrf_token": csrf(review.text)}
    )
    assert response.status_code == 503
    assert order_row().state == OrderState.OPEN


def test_get_on_pay_is_405_page(client, mocked, purchase):
    open_review(client, mocked, purchase)
    response = client.get(f"/orders/{order_row().reference}/pay")
    assert response.status_code == 405
    assert "cannot be used that way" in response.text


# --- returning from Stripe ------------------------------------------------------------------------


def paid_session(checkout_session, reference, **extra):
    return checkout_session(
        client_reference_id=reference,
        status="complete",
        payment_status="paid",
        payment_intent="pi_test_1",
        url=None,
        **extra,
    )


def test_return_records_payment_fulfils_and_redirects(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    response = client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    assert response.status_code == 303
    assert response.headers["Location"] == "https://academy.test/thanks"
    fulfil = [c.request for c in mocked.calls if c.request.url.endswith("/fulfill")]
    assert len(fulfil) == 1
    assert fulfil[0].headers["Authorization"] == BASIC
    body = json.loads(fulfil[0].body)
    assert body["state"] == "SUCCESS"
    assert body["payment_processor_order_id"] == "pi_test_1"
    data = json.loads(body["payment_processor_response_data"])
    assert data == {
        "portal_order": reference,
        "checkout_session": "cs_test_1",
        "amount_paid": 7840,
        "tax_paid": 0,
        "currency": "USD",
    }
    # No tax was charged, so no PUT.
    assert not any(c.request.method == "PUT" for c in mocked.calls)
    order = order_row()
    assert order.state == OrderState.FULFILLED
    assert order.stripe_payment_intent_id == "pi_test_1"
    assert order.amount_paid_minor == 7840


def test_return_session_id_of_another_order_is_refused(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(
        f"{SESSIONS_URL}/cs_test_other",
        json=paid_session(checkout_session, "ord_somebodyelse123", id="cs_test_other"),
    )
    response = client.get(f"/orders/{reference}/return?session_id=cs_test_other")
    assert response.status_code == 400
    assert order_row().state == OrderState.PAYING
    assert not any(c.request.url.endswith("/fulfill") for c in mocked.calls)


@pytest.mark.parametrize("session_id", ["", "x", "{CHECKOUT_SESSION_ID}", "cs_" + "a" * 300])
def test_return_with_a_bad_session_id_is_400(
    client, mocked, purchase, checkout_session, session_id
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    response = client.get(f"/orders/{order_row().reference}/return?session_id={session_id}")
    assert response.status_code == 400


def test_unpaid_return_shows_processing(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1",
        json=checkout_session(
            client_reference_id=reference, status="complete", payment_status="unpaid"
        ),
    )
    response = client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    assert response.status_code == 303
    page = client.get(response.headers["Location"])
    assert "processing" in page.text
    assert page.headers["Refresh"].startswith("3; url=")
    assert order_row().state == OrderState.PROCESSING


def test_platform_down_after_payment_shows_payment_received(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(f"{PURCHASE_URL}/fulfill", json={"detail": "down"}, status=503)
    response = client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    assert response.status_code == 303
    status = client.get(response.headers["Location"])
    assert "Payment received" in status.text
    assert "do not need to pay again" in status.text
    assert "Pay " not in status.text
    assert order_row().state == OrderState.PAID
    with db.reader() as session:
        job = session.scalar(select(Job))
    assert job.kind == "fulfil"
    assert job.state == "queued"
    assert job.attempts >= 1  # the status page nudges a due retry (back-off is 0 here)


def test_visiting_a_paid_purchase_goes_straight_on(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    calls_before = len(mocked.calls)
    again = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert again.status_code == 303
    assert again.headers["Location"] == "https://academy.test/thanks"
    assert len(mocked.calls) == calls_before  # no second purchase fetch, no second fulfil


def test_redirect_to_a_host_outside_the_allow_list_is_not_followed(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://evil.example/phish", "purchase": {"state": "SUCCESS"}},
    )
    response = client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    page = client.get(response.headers["Location"])
    assert "evil.example" not in page.text
    assert "all set" in page.text
    assert order_row().state == OrderState.FULFILLED


# --- cancelling -----------------------------------------------------------------------------------


def test_cancelled_page_offers_pay_again_or_return(client, mocked, purchase, checkout_session):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    page = client.get(f"/orders/{order_row().reference}/cancelled")
    assert page.status_code == 200
    assert "Payment not completed" in page.text
    assert "Try again" in page.text
    assert "Return to the course without paying" in page.text


def test_return_to_academy_expires_session_and_fulfils_cancelled(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.post(
        f"{SESSIONS_URL}/cs_test_1/expire",
        json=checkout_session(client_reference_id=reference, status="expired", url=None),
    )
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1",
        json=checkout_session(client_reference_id=reference, status="expired", url=None),
    )
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/course", "purchase": {"state": "CANCELLED"}},
    )
    page = client.get(f"/orders/{reference}/cancelled")
    response = client.post(f"/orders/{reference}/cancel", data={"csrf_token": csrf(page.text)})
    assert response.status_code == 303
    assert response.headers["Location"] == "https://academy.test/course"
    urls = [(c.request.method, c.request.url) for c in mocked.calls]
    assert ("POST", f"{SESSIONS_URL}/cs_test_1/expire") in urls
    fulfil = [c.request for c in mocked.calls if c.request.url.endswith("/fulfill")]
    assert json.loads(fulfil[0].body) == {"state": "CANCELLED"}
    assert order_row().state == OrderState.CANCELLED


def test_cancel_after_paying_in_another_tab_keeps_the_payment(
    client, mocked, purchase, checkout_session
):
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.post(
        f"{SESSIONS_URL}/cs_test_1/expire",
        status=400,
        json={
            "error": {
                "type": "invalid_request_error",
                "message": "Only Checkout Sessions with a status of `open` can be expired.",
            }
        },
    )
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    page = client.get(f"/orders/{reference}/cancelled")
    response = client.post(f"/orders/{reference}/cancel", data={"csrf_token": csrf(page.text)})
    assert response.status_code == 303
    fulfil = [
        json.loads(c.request.body) for c in mocked.calls if c.request.url.endswith("/fulfill")
    ]
    assert {"state": "CANCELLED"} not in fulfil
    assert order_row().state in {OrderState.PAID, OrderState.FULFILLED}


# --- tax ------------------------------------------------------------------------------------------


def test_fixed_tax_is_quoted_charged_and_written_back(make_app, mocked, purchase, checkout_session):
    client = make_app(TAX_MODE="fixed", TAX_RATES="GB:20,DE:19").test_client()
    mocked.get(PURCHASE_URL, json=purchase())
    review = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert "Tax (GB 20%)" in review.text
    assert "$15.68" in review.text  # 20% of 78.40
    assert "$94.08" in review.text
    reference = order_row().reference
    de = client.get(f"/orders/{reference}?country=DE")
    assert "Tax (DE 19%)" in de.text
    pay(client, mocked, de.text, checkout_session, country="DE")
    body = form(mocked.calls[-1].request.body)
    assert body["line_items[1][price_data][unit_amount]"] == "1490"  # 19% of 7840, rounded
    assert body["line_items[1][price_data][product_data][name]"] == "Tax (DE 19%)"
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1",
        json=paid_session(checkout_session, reference, amount_total=9330),
    )
    mocked.put(PURCHASE_URL, json=purchase(tax_price_cents=1490))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    put = next(c.request for c in mocked.calls if c.request.method == "PUT")
    assert json.loads(put.body) == {"tax_price_cents": 1490}
    assert put.headers["Authorization"] == BASIC


def test_fixed_tax_rejects_an_unknown_country(make_app, mocked, purchase):
    client = make_app(TAX_MODE="fixed", TAX_RATES="GB:20").test_client()
    review = open_review(client, mocked, purchase)
    response = client.post(
        f"/orders/{order_row().reference}/pay",
        data={"csrf_token": csrf(review.text), "country": "ZZ"},
    )
    assert response.status_code == 400


def test_stripe_tax_is_calculated_at_payment_and_written_back(
    make_app, mocked, purchase, checkout_session
):
    client = make_app(TAX_MODE="stripe").test_client()
    review = open_review(client, mocked, purchase)
    assert "Calculated at payment" in review.text
    pay(client, mocked, review.text, checkout_session)
    body = form(mocked.calls[-1].request.body)
    assert body["automatic_tax[enabled]"] == "true"
    assert body["line_items[0][price_data][tax_behavior]"] == "exclusive"
    reference = order_row().reference
    mocked.get(
        f"{SESSIONS_URL}/cs_test_1",
        json=paid_session(
            checkout_session,
            reference,
            amount_total=9408,
            total_details={"amount_discount": 0, "amount_shipping": 0, "amount_tax": 1568},
        ),
    )
    mocked.put(PURCHASE_URL, json=purchase(tax_price_cents=1568))
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    put = next(c.request for c in mocked.calls if c.request.method == "PUT")
    assert json.loads(put.body) == {"tax_price_cents": 1568}
    assert order_row().tax_paid_minor == 1568


def test_free_purchase_skips_stripe(client, mocked, purchase):
    review = open_review(
        client, mocked, purchase, price_cents=0, promo_code="FREE100", promo_code_percent_off=100
    )
    assert "Complete enrolment" in review.text
    mocked.post(
        f"{PURCHASE_URL}/fulfill",
        json={"redirect_url": "https://academy.test/thanks", "purchase": {"state": "SUCCESS"}},
    )
    response = client.post(
        f"/orders/{order_row().reference}/pay", data={"csrf_token": csrf(review.text)}
    )
    final = client.get(response.headers["Location"])
    assert final.headers["Location"] == "https://academy.test/thanks"
    assert not any(c.request.url.startswith(STRIPE_BASE) for c in mocked.calls)


def test_unexpected_error_is_a_branded_500_without_traceback(client, monkeypatch):
    from portal.platforms.skilljar import routes as skilljar

    def explode(*_args, **_kwargs):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(skilljar.orders, "find", explode)
    with responses.RequestsMock():
        response = client.get("/skilljar/checkout?purchase_id=p1abc")
    assert response.status_code == 500
    assert "secret internals" not in response.text
    assert "Traceback" not in response.text
    assert unquote("Something went wrong") in response.text


def test_status_page_refresh_slows_down_and_can_be_switched_off(
    make_app, mocked, purchase, checkout_session
):
    client = make_app(RETRY_BASE_SECONDS="600").test_client()  # no retry falls due meanwhile
    review = open_review(client, mocked, purchase)
    pay(client, mocked, review.text, checkout_session)
    reference = order_row().reference
    mocked.get(f"{SESSIONS_URL}/cs_test_1", json=paid_session(checkout_session, reference))
    mocked.post(f"{PURCHASE_URL}/fulfill", json={"detail": "down"}, status=503)
    client.get(f"/orders/{reference}/return?session_id=cs_test_1")
    first = client.get(f"/orders/{reference}/status")
    assert first.headers["Refresh"] == f"3; url=/orders/{reference}/status?check=1"
    assert "Stop automatic updates" in first.text
    later = client.get(f"/orders/{reference}/status?check=500")
    assert later.headers["Refresh"].startswith("30; url=")
    off = client.get(f"/orders/{reference}/status?auto=0")
    assert "Refresh" not in off.headers
    assert "Automatic updates are off" in off.text
    assert "Check again now" in off.text
