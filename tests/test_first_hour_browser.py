"""Browser tests for issue 27 ("the first hour"): the sandbox's way into the operator console with
the demo accounts, and Back from Stripe after OpenLearning's Join now (a form POST)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests import test_browser as shared
from tests.test_browser import (
    DESKTOP,
    PAY_BUTTON,
    PHONE,
    STRIPE_URL,
    assert_fits_horizontally,
    screenshot,
    start_purchase,
)

browser = shared.browser
portal = shared.portal
new_page = shared.new_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

ORDER_URL = re.compile(r"/orders/ord_[A-Za-z0-9_-]+$")


def test_sandbox_home_leads_to_the_console_and_a_demo_account_signs_in(portal, new_page):
    server = portal()
    made = server.app.test_cli_runner().invoke(args=["portal", "create-demo-users"])
    assert made.exit_code == 0, made.output
    page = new_page(DESKTOP)
    page.goto(server.url + "/sandbox/")
    accounts = page.get_by_role("table").filter(has_text="operator@demo.example")
    expect(accounts).to_contain_text("demo-operator-password")
    page.get_by_role("link", name="Open the operator console").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Sign in to the console")
    page.get_by_label("Email").fill("operator@demo.example")
    page.get_by_label("Password").fill("demo-operator-password")
    page.get_by_role("button", name="Sign in", exact=True).click()
    page.wait_for_url(re.compile(r"/admin/(dashboard)?$"))
    expect(page.get_by_text("operator@demo.example").first).to_be_visible()
    screenshot(page, "first-hour-console-demo-operator")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_back_from_stripe_after_openlearning_join_shows_the_review_again(
    portal, new_page, viewport
):
    server = portal()
    page = new_page(viewport)
    page.goto(server.url + "/sandbox/openlearning/courses/python-foundations/?learner=ada")
    page.get_by_role("button", name=re.compile("Join now")).click()
    # The POST answered 303: the page in the history is the order's GET page.
    page.wait_for_url(ORDER_URL)
    review_url = page.url
    expect(page.get_by_role("heading", level=1)).to_have_text("Review your order")
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)
    answer = page.go_back()
    # A page answered by the server, not Chrome's "Confirm Form Resubmission" (ERR_CACHE_MISS).
    assert answer is not None
    assert answer.status == 200
    assert page.url == review_url
    expect(page.get_by_role("heading", level=1)).to_have_text("Review your order")
    assert "ERR_CACHE_MISS" not in page.content()
    assert "Confirm Form Resubmission" not in page.content()
    # And the learner can go on paying from there.
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)
    screenshot(page, f"first-hour-openlearning-back-{'phone' if viewport == PHONE else 'desktop'}")


@pytest.mark.parametrize("viewport", [DESKTOP, PHONE], ids=["desktop", "phone"])
def test_stripe_page_shows_the_seats_and_the_promo_as_the_review_did(portal, new_page, viewport):
    server = portal()
    page = new_page(viewport)
    start_purchase(page, server, offer="data-team", quantity=2, promo="launch20")
    expect(page.locator("main")).to_contain_text("€192.00")
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)
    lines = page.locator("#line-items")
    expect(lines).to_contain_text("Qty 2 · €120.00 each")
    expect(lines).to_contain_text("LAUNCH20")
    expect(lines).to_contain_text("−€48.00")
    expect(lines).to_contain_text("Total due")
    expect(lines).to_contain_text("€192.00")
    expect(page.get_by_role("heading", level=1)).to_have_text("Pay €192.00")
    assert_fits_horizontally(page)
    screenshot(page, f"first-hour-stripe-line-items-{'phone' if viewport == PHONE else 'desktop'}")


def test_error_page_links_to_the_brands_home(portal, new_page):
    server = portal()
    page = new_page(PHONE)
    answer = page.goto(server.url + "/skilljar/checkout?purchase_id=nosuchpurchase")
    assert answer.status in {400, 404, 502}
    link = page.locator("main a.button")
    expect(link).to_have_text(re.compile(r"^Back to "))
    assert_fits_horizontally(page)
    screenshot(page, "first-hour-error-page-link")
    link.click()
    page.wait_for_url(server.url + "/sandbox/")


# --- sandbox polish -------------------------------------------------------------------------


def test_academy_banner_keeps_the_purchase_state_in_its_sentence_at_360px(portal, new_page):
    server = portal()
    page = new_page(PHONE)
    start_purchase(page, server)
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)
    page.get_by_role("link", name=re.compile("cancel payment")).click()
    page.get_by_role("button", name="Return to the course without paying").click()
    page.wait_for_url(re.compile(r"/sandbox/skilljar/academy\?returned=[0-9a-z]+$"))
    banner = page.get_by_role("status")
    expect(banner).to_contain_text("CANCELLED")
    state = banner.locator("strong")
    assert state.evaluate("el => getComputedStyle(el).display") == "inline"
    # "Purchase … is CANCELLED." reads as one sentence: the state is not on a line of its own.
    box = state.bounding_box()
    sentence = banner.locator("p").bounding_box()
    assert box["width"] < sentence["width"] - 20
    assert_fits_horizontally(page)
    screenshot(page, "first-hour-academy-banner-phone")


def test_cleeng_return_page_fits_360px(portal, new_page):
    from tests.test_browser import EXPIRY, GOOD_CARD
    from tests.test_cleeng_browser import subscribe

    server = portal()
    page = new_page(PHONE)
    page.goto(subscribe(server, "S100000001_NL"))
    page.get_by_role("button", name=re.compile(r"^(Pay|Start)")).click()
    page.wait_for_url(re.compile(r"/sandbox/stripe/"))
    page.get_by_label("Email").fill("ada@example.com")
    page.get_by_label("Card number").fill(GOOD_CARD)
    page.get_by_label("Expiry").fill(EXPIRY)
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name=re.compile(r"^(Pay|Save)")).click()
    page.wait_for_url(re.compile(r"/sandbox/cleeng/return\?orderId="), timeout=30_000)
    expect(page.get_by_role("heading", level=1)).to_be_visible()
    assert_fits_horizontally(page)
    screenshot(page, "first-hour-cleeng-return-phone")


def test_caught_mail_shows_the_brands_logo(portal, new_page):
    from portal.admin.audit import Actor
    from portal.branding.brands import BrandInput
    from portal.branding.operations import save_brand
    from portal.jobs import Worker
    from tests.test_branding import PNG

    server = portal()
    with server.app.app_context():
        save_brand(
            Actor(None, "marketer@example.com"),
            BrandInput(
                name="Demo Supplies",
                primary="#1d4ed8",
                text="#111827",
                background="#ffffff",
                accent="#1d4ed8",
                logo=PNG,
                logo_type="image/png",
                is_default=True,
            ),
        )
    page = new_page(DESKTOP)
    page.goto(server.url + "/sandbox/merchant")
    page.get_by_label("Quantity").fill("2")
    page.get_by_role("button", name=re.compile("Send")).first.click()
    expect(page.get_by_role("status").first).to_contain_text("Pay link")
    Worker(server.services, poll_seconds=0).run(once=True)  # the mail job
    page.goto(server.url + "/sandbox/mail")
    page.get_by_role("link", name=re.compile("pay", re.I)).first.click()
    page.get_by_role("link", name="See the HTML version").click()
    logo = page.locator("img").first
    expect(logo).to_have_attribute("alt", re.compile("^Demo Supplies"))
    page.wait_for_load_state("load")
    assert logo.evaluate("img => img.complete && img.naturalWidth > 0")
    assert page.problems == []


def test_a_b2b_pay_link_session_with_tax_id_and_invoice(portal, new_page):
    """The demo ERP's pay link with the B2B options: Stripe's page asks for the tax id and the
    billing address and says an invoice comes; the hosted invoice shows the tax id."""
    server = portal()
    page = new_page(PHONE)
    page.goto(server.url + "/sandbox/merchant")
    page.get_by_label("Quantity").fill("3")
    page.get_by_label("How the customer pays").select_option("redirect")
    page.get_by_label("Authorise now, capture on shipment").uncheck()
    page.get_by_label("The buyer's tax ID (and billing address)").check()
    page.get_by_label("A Stripe invoice (PDF)").check()
    page.get_by_role("button", name=re.compile("Send|Create|Pay", re.I)).first.click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Review your order")
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)
    page.get_by_label("Tax ID", exact=True).fill("GB123456789")
    page.get_by_label("Tax ID type").select_option("gb_vat")
    page.locator("#billing_line1").fill("1 Analytical Row")
    page.locator("#billing_city").fill("London")
    page.locator("#billing_postal_code").fill("EC1A 1BB")
    page.locator("#billing_country").fill("GB")
    expect(page.locator("#invoice-note")).to_be_visible()
    assert_fits_horizontally(page)
    screenshot(page, "first-hour-b2b-stripe-tax-id-invoice-phone")
    from tests.test_browser import EXPIRY, GOOD_CARD

    page.get_by_label("Card number").fill(GOOD_CARD)
    page.get_by_label("Expiry").fill(EXPIRY)
    page.get_by_label("CVC").fill("123")
    page.get_by_role("button", name="Pay", exact=True).click()
    page.wait_for_url(re.compile(r"/sandbox/merchant/thank-you"))
    (invoice,) = server.store.list("invoice")
    page.goto(invoice["hosted_invoice_url"])
    expect(page.locator("#invoice-details")).to_contain_text("GB123456789")
    assert_fits_horizontally(page)
    screenshot(page, "first-hour-b2b-invoice-phone")
