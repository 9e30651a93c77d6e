"""Honest subscription prices on the Cleeng review page (issue 26): each line as Cleeng's order
breaks it down, adding up as labelled (tax added to Cleeng's net price, or included when Cleeng's
total holds it), then what the subscription costs after today and from when: the renewal price
with tax, the next billing date from the offer's period, a free trial's end. Money and dates
through Babel in the learner's language."""

from __future__ import annotations

import re
from datetime import date

import pytest

from portal import recurring
from portal.platforms.cleeng.drafts import draft_from_order
from portal.platforms.cleeng.review import review_data
from tests.test_cleeng import (  # noqa: F401 - the app fixture
    ORDER_ID,
    app,
    cleeng_order,
    free_trial_order,
    open_review,
)


def lines(html: str) -> list[tuple[str, str]]:
    """The summary's (label, amount) pairs, tags stripped."""
    block = html[html.index('id="cleeng-lines"') : html.index("</dl>", html.index("cleeng-lines"))]
    pairs = re.findall(r"<dt[^>]*>(.*?)</dt>\s*<dd[^>]*>(.*?)</dd>", block, re.S)
    plain = [
        (re.sub(r"<[^>]+>", "", a).strip(), re.sub(r"<[^>]+>", "", b).strip()) for a, b in pairs
    ]
    return [(re.sub(r"\s+", " ", a), b) for a, b in plain]


def renewal(html: str) -> str:
    found = re.search(r'<p class="renewal" id="renewal-terms">(.*?)</p>', html, re.S)
    return re.sub(r"[ \t\n]+", " ", found.group(1)).strip() if found else ""


def monthly(**overrides) -> dict:
    """€10.00 a month before tax, 21% VAT added: €12.10 charged, no discount."""
    fields = {
        "totalPrice": 12.1,
        "priceBreakdown": {
            "offerPrice": 10.0,
            "discountAmount": 0,
            "discountedPrice": 10.0,
            "taxValue": 2.1,
            "customerServiceFee": 0,
            "paymentMethodFee": 0,
        },
        "couponCode": None,
        "discount": {"applied": False, "type": "", "periods": ""},
    }
    return cleeng_order(**{**fields, **overrides})


@pytest.fixture
def freeze_today(monkeypatch):
    """The learner reviews the order on 8 December 2026 (UTC)."""
    from datetime import UTC, datetime

    from portal.platforms.cleeng import review

    monkeypatch.setattr(review, "utcnow", lambda: datetime(2026, 12, 8, 10, 30, tzinfo=UTC))


def test_recurring_dates_are_calendar_periods():
    assert recurring.add_period(date(2026, 12, 8), "month") == date(2027, 1, 8)
    assert recurring.add_period(date(2027, 1, 31), "month") == date(2027, 2, 28)
    assert recurring.add_period(date(2028, 1, 31), "month") == date(2028, 2, 29)
    assert recurring.add_period(date(2026, 11, 30), "3months") == date(2027, 2, 28)
    assert recurring.add_period(date(2026, 12, 8), "year") == date(2027, 12, 8)
    assert recurring.add_period(date(2026, 12, 8), "2weeks") == date(2026, 12, 22)
    assert recurring.add_period(date(2028, 2, 29), "year") == date(2029, 2, 28)


def test_a_monthly_offer_adds_tax_and_says_what_renewals_cost(client, mocked, freeze_today):
    page = open_review(client, mocked, monthly()).text
    assert lines(page) == [
        ("Offer price (per month) before tax", "€10.00"),
        ("Tax (21%)", "+€2.10"),
        ("Total", "€12.10"),
    ]
    assert renewal(page) == "Then €12.10 per month from January 8, 2027, tax included."


def test_a_coupon_is_off_the_first_period_only(client, mocked, freeze_today):
    page = open_review(client, mocked).text  # €10 − 20% = €8, + 21% = €9.68
    assert lines(page) == [
        ("Offer price (per month) before tax", "€10.00"),
        ("Coupon WELCOME20", "−€2.00"),
        ("Tax (21%)", "+€1.68"),
        ("Total", "€9.68"),
    ]
    # The lines add up as labelled: 10.00 − 2.00 + 1.68 = 9.68.
    assert renewal(page) == "Then €12.10 per month from January 8, 2027, tax included."
    assert "Pay €9.68" in page


def test_a_coupon_for_three_periods_says_so(client, mocked, freeze_today):
    order = cleeng_order(discount={"applied": True, "type": "coupon", "periods": "3"})
    page = open_review(client, mocked, order).text
    assert renewal(page) == (
        "€9.68 for each of the first 3 payments. Then €12.10 per month from March 8, 2027, "
        "tax included."
    )


def test_a_free_trial_says_when_it_ends_and_what_follows(client, mocked, freeze_today):
    trial = free_trial_order()
    trial["offer"] = {**trial["offer"], "period": "year", "freeDays": 7}
    page = open_review(client, mocked, trial).text
    assert lines(page) == [
        ("Offer price (per year) before tax", "€100.00"),
        ("Free trial", "−€100.00"),
        ("Tax (21%)", "+€0.00"),
        ("Total today", "€0.00"),
    ]
    assert renewal(page) == "Free until December 15, 2026, then €121.00 per year, tax included."
    assert "Start your free trial" in page


def test_a_trial_of_one_period_ends_a_period_later(client, mocked, freeze_today):
    trial = free_trial_order()  # no freeDays: Cleeng's trial discount for one period
    trial["offer"] = {**trial["offer"], "period": "month"}
    page = open_review(client, mocked, trial).text
    assert renewal(page).startswith("Free until January 8, 2027, then €121.00 per month")


def test_a_total_that_holds_the_tax_says_included(client, mocked, freeze_today):
    """A publisher whose Cleeng prices include tax: the total is the discounted price, and the
    tax line says "included" below the total, not a second time above it."""
    order = cleeng_order(
        totalPrice=12.1,
        priceBreakdown={
            "offerPrice": 12.1,
            "discountAmount": 0,
            "discountedPrice": 12.1,
            "taxValue": 2.1,
            "customerServiceFee": 0,
            "paymentMethodFee": 0,
        },
        couponCode=None,
        discount={"applied": False, "type": "", "periods": ""},
    )
    page = open_review(client, mocked, order).text
    assert lines(page) == [
        ("Offer price (per month)", "€12.10"),
        ("Total", "€12.10"),
        ("Tax (21%), included", "€2.10"),
    ]
    assert renewal(page) == "Then €12.10 per month from January 8, 2027, tax included."


def test_fees_are_a_line_of_their_own(client, mocked, freeze_today):
    order = monthly(totalPrice=12.6)
    order["priceBreakdown"] = {**order["priceBreakdown"], "paymentMethodFee": 0.5}
    page = open_review(client, mocked, order).text
    assert ("Fees", "+€0.50") in lines(page)
    assert lines(page)[-1] == ("Total", "€12.60")


def test_in_french_through_babel(client, mocked, freeze_today):
    mocked.get(
        f"https://cleeng.test/3.1/orders/{ORDER_ID}",
        json={"responseData": {"order": cleeng_order()}, "errors": []},
    )
    page = client.get(f"/cleeng/checkout?orderId={ORDER_ID}", headers={"Accept-Language": "fr"})
    text = page.text
    assert ("Taxe (21 %)", "+1,68\xa0€") in lines(text)
    assert renewal(text) == "Puis 12,10\xa0€ par mois à partir du 8 janvier 2027, taxes incluses."


@pytest.mark.parametrize(
    ("period", "expected"),
    [("week", "per week"), ("3months", "every 3 months"), ("year", "per year")],
)
def test_every_period_is_worded(period, expected):
    draft = draft_from_order(cleeng_order(offer={"period": period}), "en", None)
    data = review_data(draft.platform_data, today=date(2026, 12, 8))
    assert data["recurring"]["period"] == period
    assert data["recurring"]["amount_minor"] == 1210
    assert data["recurring"]["from"] == recurring.add_period(date(2026, 12, 8), period).isoformat()


def test_an_unknown_period_or_no_offer_price_promises_nothing(client, mocked, freeze_today):
    page = open_review(client, mocked, cleeng_order(offer={"period": "fortnightly-ish"})).text
    assert renewal(page) == ""
    draft = draft_from_order(cleeng_order(priceBreakdown={"taxValue": 1.68}), "en", None)
    assert review_data(draft.platform_data)["recurring"] is None


def test_a_trial_without_a_tax_rate_says_nothing_it_cannot_know():
    order = free_trial_order()
    order["taxRate"] = None
    draft = draft_from_order(order, "en", None)
    assert draft.platform_data["recurring"] is None
