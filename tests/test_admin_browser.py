"""The operator console in a real browser: Debian's Chromium driven by Playwright against the live
sandbox portal. An operator signs in, finds an order a learner paid through the sandbox, and
refunds it; Stripe's and Skilljar's stand-ins show the refund. Screenshots of each step land in
test-artifacts/screenshots/admin-*.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.admin_support import PASSWORD, buy_in_sandbox
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS

pytestmark = [
    pytest.mark.browser,
    # What a browser adds is templates, CSS and HTTP; the database below is covered on both
    # backends by the other console tests.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


@pytest.fixture(scope="module")
def chromium():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"admin-{name}.png"), full_page=True)


def test_an_operator_signs_in_finds_an_order_and_refunds_it(chromium, sandbox_server):
    server = sandbox_server()
    purchase_id = buy_in_sandbox(server.url)
    created = server.app.test_cli_runner().invoke(
        args=["portal", "create-user", "ops@example.com", "--role", "operator", "--password-stdin"],
        input=PASSWORD + "\n",
    )
    assert created.exit_code == 0, created.output

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    csp_violations = []

    def watch(message):
        if "Content Security Policy" in message.text:
            csp_violations.append(message.text)

    page.on("console", watch)

    # Signed out: the console shows nothing but the sign-in form.
    page.goto(f"{server.url}/admin/orders")
    expect(page).to_have_url(re.compile(r"/admin/login\?next=/admin/orders$"))
    expect(page.get_by_role("heading", name="Sign in to the console")).to_be_visible()
    shot(page, "login")
    page.get_by_label("Email").fill("ops@example.com")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("do not match an active account")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/admin/orders$"))

    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Today (UTC)")).to_be_visible()
    shot(page, "dashboard")

    # Find the order by the learner's Skilljar purchase id.
    page.get_by_role("link", name="Orders").click()
    page.get_by_label("Purchase, order or learner id").fill(purchase_id)
    page.get_by_role("button", name="Search").click()
    expect(page.get_by_role("heading", name="1 order")).to_be_visible()
    shot(page, "orders")
    page.get_by_role("link", name=re.compile(r"^ord_")).click()
    expect(page.get_by_role("heading", name=re.compile(r"^Order ord_"))).to_be_visible()
    expect(page.locator(".title-row .state")).to_have_text("fulfilled")
    timeline = page.locator("table.timeline")
    expect(timeline).to_contain_text("checkout.sessions.create")
    expect(timeline).to_contain_text(f"/v1/purchases/{purchase_id}/fulfill")
    shot(page, "order")

    # Refund it in full.
    page.get_by_role("link", name="Refund").click()
    expect(page.get_by_label("Amount to refund")).to_have_value("49.00")
    page.get_by_label("Reason").fill("Learner asked for a refund by email")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_text("Tick the box to confirm.")).to_be_visible()  # confirmed, or nothing
    page.get_by_label("I have checked the order").check()
    shot(page, "refund")
    page.get_by_role("button", name="Refund").click()
    expect(page.get_by_role("status")).to_contain_text("Refunded $49.00 (Stripe refund re_test_")
    expect(page.get_by_role("status")).to_contain_text("Skilljar was told.")
    expect(page.locator(".title-row .state")).to_have_text("refunded")
    expect(timeline).to_contain_text("refunds.create")
    expect(timeline).to_contain_text("Learner asked for a refund by email")
    shot(page, "refunded")

    purchase = server.store.get("skilljar.purchase", purchase_id)
    assert (purchase["state"], purchase["refund_cents"]) == ("REFUNDED", 4900)
    assert purchase["refunded_at"]
    charges = [c for c in server.store.list("charge") if c["amount_refunded"]]
    assert [(c["amount"], c["amount_refunded"]) for c in charges] == [(4900, 4900)]

    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You are signed out.")).to_be_visible()
    page.goto(f"{server.url}/admin/dashboard")
    expect(page).to_have_url(re.compile(r"/admin/login"))
    assert csp_violations == []
    context.close()


def sign_in(page, base: str, email: str) -> None:
    page.goto(f"{base}/admin/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def test_an_admin_sees_users_and_the_audit_log_and_a_marketer_only_branding(
    chromium, sandbox_server
):
    server = sandbox_server()
    runner = server.app.test_cli_runner()
    for email, role in (("admin@example.com", "admin"), ("brand@example.com", "marketer")):
        result = runner.invoke(
            args=["portal", "create-user", email, "--role", role, "--password-stdin"],
            input=PASSWORD + "\n",
        )
        assert result.exit_code == 0, result.output

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, server.url, "admin@example.com")
    expect(page.get_by_role("heading", name="Dashboard", exact=True)).to_be_visible()
    page.get_by_role("link", name="Users").click()
    expect(page.get_by_role("row", name=re.compile("brand@example.com"))).to_be_visible()
    shot(page, "users")
    page.get_by_role("link", name="Settings").click()
    expect(page.get_by_role("row", name=re.compile("PORTAL_STRIPE_SECRET_KEY set"))).to_be_visible()
    shot(page, "settings")
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("cell", name="users.create").first).to_be_visible()
    shot(page, "audit")
    context.close()

    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    sign_in(page, server.url, "brand@example.com")
    expect(page.get_by_role("heading", name="Branding")).to_be_visible()
    expect(page.get_by_role("cell", name="review.html", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Orders")).to_have_count(0)
    shot(page, "branding")
    response = page.goto(f"{server.url}/admin/orders")
    assert response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    shot(page, "forbidden")
    context.close()
