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
