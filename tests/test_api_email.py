"""Pay-by-link email through a real SMTP server started in-process (aiosmtpd): the message
arrives with the branded pay link (and the sales rep's copy), its link opens the review page,
paying through the sandbox works, and an SMTP outage is retried from the job queue."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import re
import threading
from urllib.parse import urlsplit

import pytest
import requests
from aiosmtpd.controller import Controller

from portal.api import keys
from portal.models import JobState
from tests.api_support import ApiClient, deliveries, make_key, queued, run_queued, session_body
from tests.conftest import free_port


class Inbox:
    """An aiosmtpd handler that keeps what arrives."""

    def __init__(self):
        self.messages: list[tuple[list[str], email.message.EmailMessage]] = []
        self.arrived = threading.Event()

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        self.arrived.set()
        return "250 OK"


@pytest.fixture
def smtp_server():
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    inbox.url = f"smtp://127.0.0.1:{port}"
    yield inbox
    controller.stop()


def pay_link(message) -> str:
    text = message.get_body(("plain",)).get_content()
    return re.search(r"(http://\S+/orders/ord_[A-Za-z0-9_-]+)", text).group(1)


def test_pay_link_email_arrives_and_its_link_opens_the_review_page(make_app, smtp_server):
    app = make_app(SMTP_URL=smtp_server.url, BRAND_SUPPORT_EMAIL="help@acme.example")
    api = ApiClient(app.test_client(), make_key().secret)
    body = session_body(mode="link", sales_rep_email="rep@acme.example", capture_method="manual")
    order = api.post("/checkout-sessions", body).json["order"]
    assert run_queued(app, "mail") == 1
    assert smtp_server.arrived.wait(5)
    ((recipients, message),) = smtp_server.messages
    assert sorted(recipients) == ["buyer@example.com", "rep@acme.example"]
    assert message["To"] == "buyer@example.com"
    assert message["Cc"] == "rep@acme.example"
    assert message["Subject"] == "Acme Supplies: your order is ready to pay"
    assert "Acme Supplies" in message["From"]
    html = message.get_body(("html",)).get_content()
    text = message.get_body(("plain",)).get_content()
    assert "SO-1001" in text
    assert "$2,210.00" in text
    assert "help@acme.example" in text
    assert "charged when your order ships" in text
    link = pay_link(message)
    assert link == f"http://portal.test/orders/{order['id']}"
    assert f'href="{link}"' in html
    review = app.test_client().get(urlsplit(link).path)
    assert review.status_code == 200
    assert "Pay $2,210.00" in review.text
    assert [d.event_type for d in deliveries()] == ["link.sent"]


def test_an_smtp_outage_is_retried(make_app, smtp_server):
    dead = f"smtp://127.0.0.1:{free_port()}"
    app = make_app(SMTP_URL=dead)
    api = ApiClient(app.test_client(), make_key().secret)
    api.post("/checkout-sessions", session_body(mode="link"))
    run_queued(app, "mail")
    (job,) = queued("mail")
    assert job.state == JobState.QUEUED
    assert "SMTP server unreachable" in job.last_error
    assert deliveries() == []  # link.sent only once it went
    back = dataclasses.replace(app.config["PORTAL"], smtp_url=smtp_server.url)  # the server is back
    app.config["PORTAL"] = back
    app.extensions["portal"] = dataclasses.replace(app.extensions["portal"], settings=back)
    run_queued(app, "mail")
    assert smtp_server.arrived.wait(5)
    assert [d.event_type for d in deliveries()] == ["link.sent"]


def test_paying_from_the_emailed_link_through_the_sandbox(sandbox_server, smtp_server):
    server = sandbox_server(SMTP_URL=smtp_server.url)
    made = keys.create_key("ERP", allowed_hosts=["127.0.0.1"])
    body = session_body(
        mode="link",
        success_url=f"{server.url}/sandbox/merchant/thank-you",
        cancel_url=f"{server.url}/sandbox/merchant",
    )
    created = requests.post(
        f"{server.url}/api/v1/checkout-sessions",
        json=body,
        headers={"Authorization": f"Bearer {made.secret}"},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    run_queued(server.app, "mail")
    assert smtp_server.arrived.wait(5)
    ((_recipients, message),) = smtp_server.messages
    link = pay_link(message)
    assert link.startswith(server.url)
    browser = requests.Session()
    review = browser.get(link, timeout=10)
    assert review.status_code == 200
    token = re.search(r'name="csrf_token" value="([^"]+)"', review.text).group(1)
    to_stripe = browser.post(f"{link}/pay", data={"csrf_token": token}, allow_redirects=False)
    assert to_stripe.status_code == 303
    paid = browser.post(
        to_stripe.headers["Location"],
        data={
            "email": "buyer@example.com",
            "card_number": "4242424242424242",
            "expiry": "12/40",
            "cvc": "123",
        },
        allow_redirects=False,
    )
    assert paid.status_code == 303
    landed = browser.get(paid.headers["Location"], allow_redirects=False)
    assert landed.status_code == 303
    assert landed.headers["Location"] == f"{server.url}/sandbox/merchant/thank-you"
    order_id = created.json()["order"]["id"]
    order = requests.get(
        f"{server.url}/api/v1/orders/{order_id}",
        headers={"Authorization": f"Bearer {made.secret}"},
        timeout=10,
    ).json()
    assert order["status"] == "paid"
    assert order["amount_captured"] == 221000
