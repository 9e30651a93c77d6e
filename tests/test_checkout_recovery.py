"""Abandoned checkouts, opt-in per brand (issue 26), against the sandbox's Stripe stand-in over
real HTTP and the real SDK: a brand that opted in gets Stripe's recovery on its Checkout Sessions
(`after_expiration.recovery`, `consent_collection.promotions`); a buyer who consented and left
gets one branded "finish your purchase" email with Stripe's recovery link; paying through that
link pays the order, marks it recovered, and the console counts the recovered revenue. A buyer
who did not consent, and a brand that did not opt in, get nothing. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select

from portal import recovery
from portal.admin import figures
from portal.db import db
from portal.models import Job, OrderEvent, OrderState, utcnow
from tests.test_money_events import (
    CARD,
    deliver_events,
    merchant_order,
    reload_by_reference,
    run_worker,
)


@pytest.fixture
def opted_in(sandbox_server):
    portal = sandbox_server(CHECKOUT_RECOVERY_BRANDS="*")
    portal.delivered = set()
    yield portal
    db.engine.dispose()


@pytest.fixture
def not_opted_in(sandbox_server):
    portal = sandbox_server()
    portal.delivered = set()
    yield portal
    db.engine.dispose()


def to_stripe(server, browser) -> tuple[str, str]:
    """The merchant's customer presses Pay: (the order's reference, Stripe's page URL)."""
    review_url = merchant_order(server, browser)
    review = browser.get(review_url)
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    answer = browser.post(f"{review_url}/pay", data={"csrf_token": token}, allow_redirects=False)
    assert answer.status_code == 303, answer.text
    return review_url.rsplit("/", 1)[1], answer.headers["Location"]


def stripe_session(server, page_url: str) -> dict:
    return server.store.get("checkout.session", page_url.rsplit("/", 1)[1])


def recovery_mails() -> list[Job]:
    with db.reader() as session:
        return [
            job
            for job in session.scalars(select(Job).where(Job.kind == "mail"))
            if job.payload.get("template") == "checkout_recovery"
        ]


def test_a_consenting_buyer_who_left_gets_one_email_and_pays_through_the_link(opted_in):
    server = opted_in
    browser = requests.Session()
    reference, page = to_stripe(server, browser)
    created = stripe_session(server, page)
    assert created["after_expiration"]["recovery"]["enabled"] is True
    assert created["consent_collection"] == {"promotions": "auto"}
    assert "Keep me updated" in browser.get(page).text

    left = browser.post(
        f"{page}/leave", data={"email": "buyer@example.com", "promotions": "opt_in"}
    )
    assert left.status_code == 200
    deliver_events(server)
    deliver_events(server)  # nothing new: a replay changes nothing
    order = reload_by_reference(reference)
    assert order.state == OrderState.EXPIRED
    (mail,) = recovery_mails()
    url = mail.payload["notice"]["recovery_url"]
    assert url == f"{server.url}/sandbox/stripe/recover/{created['id']}"
    assert mail.payload["to"] == "buyer@example.com"
    run_worker(server)
    (mail,) = recovery_mails()
    assert mail.state == "done"
    caught = browser.get(f"{server.url}/sandbox/mail").text
    assert "finish your purchase" in caught

    # The buyer comes back through Stripe's link: a new session, recovered_from the first.
    again = browser.get(url, allow_redirects=False)
    assert again.status_code == 303
    recovered = stripe_session(server, again.headers["Location"])
    assert recovered["recovered_from"] == created["id"]
    assert recovered["client_reference_id"] == reference
    assert browser.get(url, allow_redirects=False).headers["Location"] == again.headers["Location"]
    paid = browser.post(again.headers["Location"], data=CARD, allow_redirects=False)
    assert paid.status_code == 303
    browser.get(paid.headers["Location"])
    deliver_events(server)
    order = reload_by_reference(reference)
    assert order.is_paid
    assert order.stripe_session_id == recovered["id"]
    with db.reader() as session:
        marks = session.scalars(
            select(OrderEvent).where(
                OrderEvent.order_id == order.id, OrderEvent.kind == "recovered"
            )
        ).all()
    assert len(marks) == 1
    assert recovery.revenue(utcnow() - timedelta(days=1)) == [("USD", 1, order.amount_paid_minor)]
    assert figures.dashboard().recovered == [("USD", 1, order.amount_paid_minor)]
    assert browser.get(url).status_code == 410  # the recovered order is paid: the link is spent


def test_a_buyer_who_did_not_consent_gets_no_email(opted_in):
    server = opted_in
    browser = requests.Session()
    reference, page = to_stripe(server, browser)
    browser.post(f"{page}/leave", data={"email": "buyer@example.com"})
    assert stripe_session(server, page)["consent"] == {
        "promotions": "opt_out",
        "terms_of_service": None,
    }
    deliver_events(server)
    assert reload_by_reference(reference).state == OrderState.EXPIRED
    assert recovery_mails() == []


def test_a_brand_that_did_not_opt_in_gets_neither_recovery_nor_email(not_opted_in):
    server = not_opted_in
    browser = requests.Session()
    reference, page = to_stripe(server, browser)
    created = stripe_session(server, page)
    assert created["after_expiration"] is None
    assert created["consent_collection"] is None
    assert "Keep me updated" not in browser.get(page).text
    server.store.put("checkout.session", created["id"], {**created, "expires_at": 0})
    browser.get(page)  # the stand-in notices the session ran out
    deliver_events(server)
    assert reload_by_reference(reference).state == OrderState.EXPIRED
    assert recovery_mails() == []
    assert figures.dashboard().recovered == []


def test_the_opt_in_is_per_brand(make_app):
    """`PORTAL_CHECKOUT_RECOVERY_BRANDS` lists brand ids: an order of another brand is not
    offered recovery."""
    from portal.admin.audit import Actor
    from portal.branding.brands import BrandInput
    from portal.branding.operations import assign, save_brand
    from portal.config import load_settings
    from portal.models import Order

    app = make_app()
    marketer = Actor(None, "marketer@example.com")

    def brand_named(name: str):
        return save_brand(
            marketer,
            BrandInput(
                name=name,
                primary="#0b6e4f",
                text="#102a43",
                background="#ffffff",
                accent="#0b6e4f",
                font_stack="system",
            ),
        )

    with app.app_context():
        brand = brand_named("Recovering Co")
        streaming = brand_named("Streaming Co")
        assign(marketer, "skilljar", "*", brand.id)
        assign(marketer, "cleeng", "*", streaming.id)
        order = Order(platform="skilljar", platform_ref="p1", reference="ord_x", currency="USD")
        assert recovery.offered(
            load_settings({"CHECKOUT_RECOVERY_BRANDS": (str(brand.id),)}, environ={}), order
        )
        assert not recovery.offered(
            load_settings({"CHECKOUT_RECOVERY_BRANDS": (str(streaming.id),)}, environ={}), order
        )
        assert not recovery.offered(
            load_settings({"CHECKOUT_RECOVERY_BRANDS": ()}, environ={}), order
        )
        assert recovery.offered(
            load_settings({"CHECKOUT_RECOVERY_BRANDS": ("*",)}, environ={}), order
        )
        other = Order(platform="cleeng", platform_ref="1", reference="ord_y", currency="EUR")
        assert not recovery.offered(
            load_settings({"CHECKOUT_RECOVERY_BRANDS": (str(brand.id),)}, environ={}), other
        )
