"""Real-browser tests: Debian's Chromium driven by Playwright against the live sandbox portal.

They cover what only a browser shows: layout at phone and desktop widths, keyboard-only use with a
visible focus, the purchase with JavaScript switched off, the self-refreshing status page, and an
axe-core scan of every learner-facing page. Screenshots land in test-artifacts/screenshots/.

Needs /usr/bin/chromium (`apt-get install chromium`) and axe-core (`npm ci`); `.ci/run` installs
both. Playwright's own browser download is not used.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import date
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from portal.sandbox.skilljar_api import new_purchase

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-artifacts" / "screenshots"
AXE_SOURCE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE = {"width": 360, "height": 800}
DESKTOP = {"width": 1280, "height": 900}

GOOD_CARD = "4242 4242 4242 4242"
DECLINED_CARD = "4000 0000 0000 0002"
# Always in the future, so the tests do not start failing in some later year.
EXPIRY = f"12/{(date.today().year + 4) % 100:02d}"
LONG_TITLE = (
    "Advanced Machine Learning Engineering for Production Systems: Feature Stores, Model "
    "Monitoring and Continuous Delivery (Professional Certificate, 12-week cohort) "
    "Datenverarbeitungsinfrastrukturzertifizierungsvorbereitung"
)

PAY_BUTTON = re.compile(r"^(Try again: )?Pay ")
REVIEW_URL = re.compile(r"/skilljar/checkout\?purchase_id=[0-9a-z]+$")
STRIPE_URL = re.compile(r"/sandbox/stripe/pay/cs_[A-Za-z0-9_]+$")
CANCELLED_URL = re.compile(r"/orders/ord_[A-Za-z0-9_-]+/cancelled")
STATUS_URL = re.compile(r"/orders/ord_[A-Za-z0-9_-]+/status$")
THANK_YOU_URL = re.compile(r"/sandbox/skilljar/academy/thank-you/[0-9a-z]+$")

pytestmark = [
    pytest.mark.browser,
    # The browser sees templates, CSS and HTTP; the database under them is the same code on
    # SQLite and PostgreSQL, which the integration tests already run on both. One database keeps
    # the slowest tests of the suite from doubling without adding coverage.
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


# --- fixtures -------------------------------------------------------------------------------


# Module scope: tests/test_branding_browser.py imports this fixture, and two Playwright sessions
# alive at once in one thread would clash; each module starts and stops its own.
@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    # launch() gives every run a fresh temporary profile (user-data-dir) and removes it on close.
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def axe_source() -> str:
    if not AXE_SOURCE.exists():
        pytest.fail(f"{AXE_SOURCE} is missing: run `npm ci` in the project root")
    return AXE_SOURCE.read_text(encoding="utf-8")


@pytest.fixture
def portal(sandbox_server):
    """portal(**settings) -> a live sandbox portal whose Stripe stand-in sends its webhooks 0.2 s
    after a payment, racing the learner's return as real Stripe does."""

    def factory(**overrides):
        return sandbox_server(SANDBOX_WEBHOOK_DELAY_SECONDS="0.2", **overrides)

    yield factory
    # Let webhooks still on their way arrive while the portal is up, not knock on a closed port.
    for thread in threading.enumerate():
        if thread.name == "sandbox-webhook":
            thread.join(timeout=15)


@pytest.fixture
def new_page(browser):
    """new_page(viewport, **context_options) -> a page in a fresh browser context (no cookies)."""
    contexts = []

    def factory(viewport=DESKTOP, **options) -> Page:
        context = browser.new_context(viewport=viewport, **options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        # Script errors, and anything the page's Content-Security-Policy refused (an inline style
        # or script would be refused in production too).
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on(
            "console",
            lambda msg: "Content Security Policy" in msg.text and problems.append(msg.text),
        )
        page.problems = problems
        return page

    yield factory
    for context in contexts:
        context.close()


# --- helpers --------------------------------------------------------------------------------


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def seed_purchase(server, description: str | None = None, **kwargs) -> str:
    """A CREATED purchase in the Skilljar stand-in, optionally with another offer description."""
    args = {"offer_id": "intro-python", "quantity": 2, "promo": "LAUNCH20", **kwargs}
    with server.app.app_context():
        purchase = new_purchase(**args)
        if description is not None:
            purchase["offer_description"] = description
            server.store.put("skilljar.purchase", purchase["id"], purchase)
    return purchase["id"]


def start_purchase(page: Page, server, offer="intro-python", quantity=2, promo="launch20"):
    """From the demo academy to the portal's review page, with the mouse."""
    page.goto(server.url + "/sandbox/skilljar/academy")
    form = page.locator("form").filter(has=page.locator(f"input[name=offer][value={offer}]"))
    form.get_by_label("Quantity").fill(str(quantity))
    form.get_by_label("Promo code").fill(promo)
    form.get_by_role("button", name="Proceed to Checkout").click()
    page.wait_for_url(REVIEW_URL)
    expect(page.get_by_role("heading", level=1)).to_have_text("Review your order")


def go_to_stripe(page: Page) -> None:
    page.get_by_role("button", name=PAY_BUTTON).click()
    page.wait_for_url(STRIPE_URL)


def pay_on_stripe(page: Page, card: str) -> None:
    page.get_by_label("Card number").fill(card)
    page.get_by_label("Expiry").fill(EXPIRY)
    page.get_by_label("CVC").fill("123")
    page.get_by_label("Name on card").fill("Ada Lovelace")
    page.get_by_role("button", name="Pay", exact=True).click()


def assert_fits_horizontally(page: Page) -> None:
    """No horizontal scrolling, and nothing in the page's regions sticks out of the viewport."""
    widths = page.evaluate(
        "() => ({scroll: document.scrollingElement.scrollWidth, viewport: window.innerWidth})"
    )
    assert widths["scroll"] <= widths["viewport"], widths
    outside = page.evaluate(
        """() => [...document.querySelectorAll('header *, main *, footer *')]
            .filter(el => {
              const r = el.getBoundingClientRect();
              return r.width > 0 && (r.left < -0.5 || r.right > window.innerWidth + 0.5);
            })
            .map(el => el.tagName + '.' + el.className + ': ' + el.textContent.slice(0, 40))"""
    )
    assert outside == []
    # Label columns keep room for whole words (a long value must not squeeze them to a letter).
    squeezed = page.evaluate(
        """() => [...document.querySelectorAll('dl dt')]
            .filter(dt => dt.getBoundingClientRect().width < 96)
            .map(dt => dt.textContent)"""
    )
    assert squeezed == []


def focus_report(page: Page) -> dict:
    return page.evaluate(
        """() => {
          const el = document.activeElement;
          const s = getComputedStyle(el);
          const r = el.getBoundingClientRect();
          return {
            element: el.tagName + ' ' + (el.getAttribute('name') || el.textContent.trim()),
            outline: s.outlineStyle,
            width: parseFloat(s.outlineWidth),
            onScreen: r.bottom > 0 && r.top < window.innerHeight && r.right > 0
              && r.left < window.innerWidth,
          };
        }"""
    )


def assert_focus_visible(page: Page) -> dict:
    """The focused element shows the portal's own ring (Chromium's default is a 1 px 'auto' one),
    and is on screen (WCAG 2.4.7 focus visible, 2.4.11 focus not obscured)."""
    report = focus_report(page)
    assert report["outline"] != "none", report
    assert report["width"] >= 2, report
    assert report["onScreen"], report
    return report


def tab_to(page: Page, target, limit: int = 30) -> None:
    """Press Tab until `target` has the focus; every stop on the way must show its focus."""
    visited = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        visited.append(assert_focus_visible(page)["element"])
        if target.evaluate("el => el === document.activeElement"):
            return
    pytest.fail(f"not reached with {limit} Tab presses; focus went through {visited}")


def axe_violations(page: Page, axe_source: str) -> list[dict]:
    # page.evaluate runs through the DevTools protocol, which the page's CSP does not govern
    # (an injected <script> would be refused by script-src 'self').
    page.evaluate(axe_source)
    return page.evaluate(
        """async () => {
          const result = await axe.run(document, {
            resultTypes: ['violations'],
            // WCAG 2.2 AA 2.5.8 (target size) is off by default in axe 4.
            rules: {'target-size': {enabled: true}},
          });
          return result.violations.map(v => ({
            id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.map(n => n.target.join(' ') + ' :: ' + n.failureSummary),
          }));
        }"""
    )


# --- layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["phone", "desktop"])
def test_review_page_fits_phone_and_desktop(portal, new_page, name):
    server = portal()
    page = new_page(PHONE if name == "phone" else DESKTOP)
    start_purchase(page, server)
    assert_fits_horizontally(page)
    pay = page.get_by_role("button", name=PAY_BUTTON)
    # The total and the pay button are on the first screen, without scrolling.
    expect(pay).to_be_in_viewport(ratio=1)
    expect(page.locator("dd.total")).to_be_in_viewport(ratio=1)
    box = pay.bounding_box()
    assert box["height"] >= 44, box  # a comfortable touch target
    screenshot(page, f"review-{name}")

    purchase_id = seed_purchase(server, LONG_TITLE, offer_id="data-team", quantity=3)
    page.goto(f"{server.url}/skilljar/checkout?purchase_id={purchase_id}")
    expect(page.get_by_text(LONG_TITLE)).to_be_visible()
    assert_fits_horizontally(page)
    expect(page.get_by_role("button", name=PAY_BUTTON)).to_be_visible()
    screenshot(page, f"review-long-title-{name}")
    assert page.problems == []


# --- keyboard -------------------------------------------------------------------------------


def test_keyboard_only_purchase(portal, new_page):
    server = portal()
    page = new_page(PHONE)
    page.goto(server.url + "/sandbox/skilljar/academy")
    keyboard = page.keyboard

    form = page.locator("form").filter(has=page.locator("input[name=offer][value=intro-python]"))
    tab_to(page, form.get_by_label("Quantity"))
    keyboard.press("ArrowUp")
    tab_to(page, form.get_by_label("Promo code"))
    keyboard.type("launch20")
    tab_to(page, form.get_by_role("button", name="Proceed to Checkout"))
    keyboard.press("Enter")
    page.wait_for_url(REVIEW_URL)
    expect(page.locator("dl.lines")).to_contain_text("LAUNCH20")
    expect(page.locator("dl.lines")).to_contain_text("Quantity2")

    pay = page.get_by_role("button", name=PAY_BUTTON)
    tab_to(page, pay)
    report = assert_focus_visible(page)
    assert report["element"].startswith("BUTTON Pay"), report
    screenshot(page, "review-phone-pay-focused")
    keyboard.press("Enter")
    page.wait_for_url(STRIPE_URL)

    email = page.get_by_label("Email")
    tab_to(page, email)
    keyboard.press("ControlOrMeta+A")
    keyboard.type("ada@example.com")
    for label, text in (("Card number", GOOD_CARD), ("Expiry", EXPIRY), ("CVC", "123")):
        tab_to(page, page.get_by_label(label))
        keyboard.type(text)
    expect(page.get_by_label("Card number")).to_have_value(GOOD_CARD)
    screenshot(page, "stripe-phone-filled")
    tab_to(page, page.get_by_role("button", name="Pay", exact=True))
    keyboard.press("Enter")

    page.wait_for_url(THANK_YOU_URL)
    expect(page.locator("#purchase-state")).to_have_text("SUCCESS")
    assert page.problems == []


# --- decline and cancel ---------------------------------------------------------------------


def test_declined_card_then_cancel_returns_to_the_course(portal, new_page):
    server = portal()
    page = new_page(PHONE)
    start_purchase(page, server)
    go_to_stripe(page)
    stripe_url = page.url

    pay_on_stripe(page, DECLINED_CARD)
    expect(page.get_by_role("alert")).to_have_text("Your card was declined.")
    assert page.url == stripe_url
    expect(page.get_by_label("Card number")).to_have_value(DECLINED_CARD)
    screenshot(page, "stripe-declined-phone")

    page.get_by_role("link", name=re.compile("cancel payment")).click()
    page.wait_for_url(CANCELLED_URL)
    expect(page.get_by_role("status")).to_contain_text("Payment not completed")
    expect(page.get_by_role("button", name=re.compile(r"^Try again: Pay "))).to_be_visible()
    back = page.get_by_role("button", name="Return to the course without paying")
    expect(back).to_be_visible()
    assert_fits_horizontally(page)
    screenshot(page, "review-cancelled-phone")

    back.click()
    page.wait_for_url(re.compile(r"/sandbox/skilljar/academy\?returned=[0-9a-z]+$"))
    expect(page.get_by_role("status")).to_contain_text("CANCELLED")
    assert page.problems == []


# --- the status page ------------------------------------------------------------------------


def test_status_page_moves_on_by_itself_when_the_platform_recovers(portal, new_page):
    # Enough retries that the status page's own nudges cannot use them all up while we look.
    server = portal(RETRY_MAX_ATTEMPTS="100", INLINE_FULFIL_SECONDS="1")
    # No JavaScript: the page must refresh itself with plain HTTP.
    page = new_page(PHONE, java_script_enabled=False)
    start_purchase(page, server)
    go_to_stripe(page)
    server.control(skilljar_fault_rate=1.0)

    with page.expect_response(STATUS_URL) as status_response:
        pay_on_stripe(page, GOOD_CARD)
    response = status_response.value
    assert response.status == 200
    assert re.fullmatch(
        r"\d+; url=/orders/ord_[\w-]+/status\?check=\d+", response.headers.get("refresh", "")
    ), response.headers
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Payment received: finishing your enrolment"
    )
    expect(page.get_by_role("status")).to_contain_text("you do not need to pay again")
    assert_fits_horizontally(page)
    screenshot(page, "status-phone")

    server.control(skilljar_fault_rate=0.0)
    # No clicking: the page's own refresh carries the browser to the academy.
    page.wait_for_url(THANK_YOU_URL, timeout=30_000)
    expect(page.locator("#purchase-state")).to_have_text("SUCCESS")
    assert page.problems == []


# --- error pages ----------------------------------------------------------------------------


def academy_purchase(server) -> str:
    """A purchase created by the academy's form, without following it to the portal."""
    response = requests.post(
        server.url + "/sandbox/skilljar/academy/checkout",
        data={"offer": "intro-python", "quantity": "1"},
        allow_redirects=False,
        timeout=5,
    )
    assert response.status_code == 303
    return response.headers["Location"].rsplit("=", 1)[1]


def mark_purchase(server, purchase_id: str, state: str) -> None:
    key = server.app.config["PORTAL"].skilljar_api_key
    response = requests.put(
        f"{server.url}/sandbox/skilljar/v1/purchases/{purchase_id}",
        data=json.dumps({"state": state}),
        headers={"Content-Type": "application/json"},
        auth=(key, ""),
        timeout=5,
    )
    response.raise_for_status()


def assert_branded(page: Page) -> None:
    expect(page.locator("header .brand")).to_have_text("Secure checkout")
    expect(page.locator("footer")).to_contain_text("Payments are processed securely by Stripe")
    # The portal's stylesheet applies (no browser-default serif page).
    font = page.evaluate("getComputedStyle(document.body).fontFamily")
    assert "system-ui" in font, font
    expect(page.locator("main")).not_to_contain_text("Traceback")


@pytest.mark.parametrize(
    ("status", "heading"),
    [
        (400, "This checkout link is not valid"),
        (404, "Purchase not found"),
        (409, "This purchase can no longer be paid"),
    ],
)
def test_error_pages_are_branded(portal, new_page, status, heading):
    server = portal()
    page = new_page(PHONE)
    if status == 400:
        purchase_id = "NOT-A-VALID-ID"
    elif status == 404:
        purchase_id = "0123456789abcdef"
    else:
        purchase_id = academy_purchase(server)
        mark_purchase(server, purchase_id, "SUCCESS")
    response = page.goto(f"{server.url}/skilljar/checkout?purchase_id={purchase_id}")
    assert response.status == status
    expect(page.get_by_role("heading", level=1)).to_have_text(heading)
    assert_branded(page)
    assert_fits_horizontally(page)
    screenshot(page, f"error-{status}-phone")
    assert page.problems == []


# --- accessibility --------------------------------------------------------------------------


def reach_review(page, server):
    start_purchase(page, server)


def reach_long_review(page, server):
    purchase_id = seed_purchase(server, LONG_TITLE, offer_id="data-team", quantity=3)
    page.goto(f"{server.url}/skilljar/checkout?purchase_id={purchase_id}")


def reach_cancelled(page, server):
    start_purchase(page, server)
    go_to_stripe(page)
    page.get_by_role("link", name=re.compile("cancel payment")).click()
    page.wait_for_url(CANCELLED_URL)


def reach_status(page, server):
    start_purchase(page, server)
    go_to_stripe(page)
    server.control(skilljar_fault_rate=1.0)

    def hold_still(route):
        # The real page, minus its Refresh header, so it does not reload while being scanned
        # (axe reads the DOM; the header is not part of it). test_status_page_... covers it.
        response = route.fetch()
        headers = {k: v for k, v in response.headers.items() if k.lower() != "refresh"}
        route.fulfill(response=response, headers=headers)

    page.route(STATUS_URL, hold_still)
    pay_on_stripe(page, GOOD_CARD)
    page.wait_for_url(STATUS_URL)
    expect(page.get_by_role("heading", level=1)).to_contain_text("Payment received")


def reach_error(page, server):
    page.goto(f"{server.url}/skilljar/checkout?purchase_id=0123456789abcdef")


def reach_stripe(page, server):
    start_purchase(page, server)
    go_to_stripe(page)


def reach_stripe_declined(page, server):
    reach_stripe(page, server)
    pay_on_stripe(page, DECLINED_CARD)
    expect(page.get_by_role("alert")).to_be_visible()


def reach_academy(page, server):
    page.goto(server.url + "/sandbox/skilljar/academy")


def reach_thank_you(page, server):
    start_purchase(page, server)
    go_to_stripe(page)
    pay_on_stripe(page, GOOD_CARD)
    page.wait_for_url(THANK_YOU_URL)


PAGES = {
    "review": reach_review,
    "review-long-title": reach_long_review,
    "review-cancelled": reach_cancelled,
    "status": reach_status,
    "error-404": reach_error,
    "stripe": reach_stripe,
    "stripe-declined": reach_stripe_declined,
    "academy": reach_academy,
    "thank-you": reach_thank_you,
}


@pytest.mark.parametrize("name", list(PAGES))
def test_pages_pass_axe(portal, new_page, axe_source, name):
    """No axe violations at all, of any impact, on each page of a purchase, at phone and desktop
    widths; no inline style or script either (the CSP would refuse them)."""
    server = portal(RETRY_MAX_ATTEMPTS="100", INLINE_FULFIL_SECONDS="1")
    page = new_page(PHONE)
    PAGES[name](page, server)
    assert page.locator("[style], script").count() == 0
    for viewport_name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page.set_viewport_size(viewport)
        screenshot(page, f"{name}-{viewport_name}")
        assert_fits_horizontally(page)
        violations = axe_violations(page, axe_source)
        assert violations == [], f"{viewport_name}: " + json.dumps(violations, indent=2)
    assert page.problems == []


# --- without JavaScript ---------------------------------------------------------------------


def test_purchase_works_without_javascript(portal, new_page):
    server = portal()
    page = new_page(DESKTOP, java_script_enabled=False)
    start_purchase(page, server)
    assert page.locator("script").count() == 0
    screenshot(page, "review-desktop-no-js")
    go_to_stripe(page)
    pay_on_stripe(page, GOOD_CARD)
    page.wait_for_url(THANK_YOU_URL)
    expect(page.locator("#purchase-state")).to_have_text("SUCCESS")
    assert page.problems == []
