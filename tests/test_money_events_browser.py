"""Issue 26 in a real browser (Debian's Chromium, Playwright) against the live sandbox: what a
user of `make demo` does. The refund form warns what a partial refund does before it is
confirmed (at 360 px wide too); the sandbox's Stripe dashboard refunds part of a payment, opens a
dispute and loses it, each sending Stripe's real webhook event; the console's dashboard lists the
money alerts. Screenshots land in test-artifacts/screenshots/money-*.png."""

from __future__ import annotations

import re
import threading
import time

import pytest
from playwright.sync_api import expect

from portal.jobs import Worker
from portal.orders import find as find_order
from tests.admin_support import PASSWORD, buy_in_sandbox
from tests.test_admin_browser import chromium, sign_in  # noqa: F401 - the fixture
from tests.test_browser import SCREENSHOTS

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"money-{name}.png"), full_page=True)


def wait_until(check, seconds: float = 20.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("the portal did not get there in time")


def test_a_demo_user_refunds_and_loses_a_dispute_from_the_sandbox_dashboard(
    chromium,  # noqa: F811 - the fixture
    sandbox_server,
):
    server = sandbox_server()
    server.control(webhook_delay_seconds=0)  # the stand-in delivers Stripe's events itself
    worker = Worker(server.services, poll_seconds=0.2)  # what `make demo` runs beside the web
    running = threading.Thread(target=worker.run, daemon=True)
    running.start()
    purchase_id = buy_in_sandbox(server.url, quantity=2)
    created = server.app.test_cli_runner().invoke(
        args=["portal", "create-user", "ops@example.com", "--role", "operator", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output
    order = find_order("skilljar", purchase_id)

    # The console's refund form, on a phone: the partial-refund warning before the confirmation.
    phone = chromium.new_context(viewport={"width": 360, "height": 800})
    page = phone.new_page()
    sign_in(page, server.url, "ops@example.com")
    page.goto(f"{server.url}/admin/orders/{order.reference}/refund")
    warning = page.locator("#refund-effects")
    expect(warning).to_contain_text("the purchase stays SUCCESS and the learner keeps the course")
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    shot(page, "refund-form-360")
    phone.close()

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{server.url}/sandbox/")
    page.get_by_role("link", name=re.compile("Open the Stripe dashboard")).click()
    expect(page.get_by_role("heading", name="Payments")).to_be_visible()
    page.get_by_label(re.compile("Amount to refund")).fill("20.00")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_role("status")).to_contain_text("Refunded $20.00")
    shot(page, "stripe-dashboard-refunded")
    wait_until(
        lambda: (server.store.get("skilljar.purchase", purchase_id) or {}).get("refund_cents")
    )
    purchase = server.store.get("skilljar.purchase", purchase_id)
    assert (purchase["state"], purchase["refund_cents"]) == ("SUCCESS", 2000)

    page.get_by_role("button", name="The card holder disputes the payment").click()
    expect(page.get_by_role("status")).to_contain_text("opened")
    wait_until(lambda: server.store.get("skilljar.purchase", purchase_id)["state"] == "FLAGGED")
    page.get_by_role("button", name="The merchant loses the dispute").click()
    expect(page.get_by_role("status")).to_contain_text("lost")
    shot(page, "stripe-dashboard-dispute-lost")
    wait_until(lambda: server.store.get("skilljar.purchase", purchase_id)["state"] == "REFUNDED")
    purchase = server.store.get("skilljar.purchase", purchase_id)
    assert purchase["refund_cents"] == order.amount_paid_minor

    sign_in(page, server.url, "ops@example.com")
    page.goto(f"{server.url}/admin/dashboard")
    alerts = page.locator("section[aria-labelledby=money-alerts-heading]")
    expect(alerts).to_contain_text("dispute opened")
    expect(alerts).to_contain_text("dispute lost")
    shot(page, "console-money-alerts")
    context.close()
    worker.stopping.set()
    running.join(10)


EMAIL_SAMPLES = [
    ("email/receipt.html", "email-receipt-html", "en"),
    ("email/refund_issued.html", "email-refund-partial-html", "en"),
    ("email/refund_issued.html", "email-refund-full-html", "fr"),
    ("email/payment_failed.html", "email-payment-failed-html", "en"),
    ("email/pay_link_cancelled.html", "email-pay-link-cancelled-html", "en"),
    ("email/checkout_recovery.html", "email-checkout-recovery-html", "en"),
    ("email/checkout_recovery.html", "email-checkout-recovery-html", "fr"),
]


def test_each_new_email_as_a_marketer_previews_it(chromium, sandbox_server):  # noqa: F811
    server = sandbox_server()
    created = server.app.test_cli_runner().invoke(
        args=["portal", "create-user", "mk@example.com", "--role", "marketer", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output
    context = chromium.new_context(viewport={"width": 700, "height": 900})
    page = context.new_page()
    sign_in(page, server.url, "mk@example.com")
    for template, state, lang in EMAIL_SAMPLES:
        response = page.goto(
            f"{server.url}/admin/branding/templates/{template}/preview?state={state}&lang={lang}"
        )
        assert response.status == 200, (template, state)
        shot(page, f"{state}-{lang}")
    page.goto(
        f"{server.url}/admin/branding/templates/email/refund_issued.html/preview"
        "?state=email-refund-full-html&lang=fr"
    )
    expect(page.locator("body")).to_contain_text("Votre commande est désormais entièrement")
    page.goto(
        f"{server.url}/admin/branding/templates/email/checkout_recovery.html/preview"
        "?state=email-checkout-recovery-html&lang=fr"
    )
    expect(page.locator("body")).to_contain_text("Finaliser votre achat")
    expect(page.locator("body")).to_contain_text("cs_test_recovery")
    context.close()
