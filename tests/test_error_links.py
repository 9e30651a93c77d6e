"""Error pages link to the platform's page when the portal knows it (the order's return address,
a genuine token's course page, the allow-listed page the learner came from), else to the
brand's home (PORTAL_BRAND_HOME_URL); never to an address off the allow-list."""

from __future__ import annotations

import re

import pytest

from portal.models import OrderState
from tests.admin_support import make_order


def back_link(html: str):
    found = re.search(r'<a class="button secondary" href="([^"]+)">([^<]+)</a>', html)
    return (found.group(1), found.group(2)) if found else None


def test_an_orders_error_page_links_to_its_platform_page(client):
    order = make_order(state=OrderState.OPEN, redirect_url="https://academy.test/courses/py")
    refused = client.post(f"/orders/{order.reference}/pay")  # no CSRF token: 400
    assert refused.status_code == 400
    assert back_link(refused.text) == ("https://academy.test/courses/py", "Back to academy.test")


def test_an_orders_return_address_off_the_allow_list_is_not_linked(make_app):
    client = make_app(BRAND_HOME_URL="https://www.brand.test").test_client()
    order = make_order(state=OrderState.OPEN, redirect_url="https://evil.test/")
    refused = client.post(f"/orders/{order.reference}/pay")
    assert back_link(refused.text) == ("https://www.brand.test", "Back to brand.test")


def test_the_allow_listed_page_the_learner_came_from_is_linked(client):
    page = client.get(
        "/skilljar/checkout?purchase_id=NOT-AN-ID",
        headers={"Referer": "https://academy.test/courses/python"},
    )
    assert page.status_code in {400, 404}
    assert back_link(page.text) == ("https://academy.test/courses/python", "Back to academy.test")


@pytest.mark.parametrize(
    "referer",
    [
        "https://evil.test/phish",
        "javascript:alert(1)",
        "http://academy.test/",  # http to a non-local host
        "https://academy.test.evil.test/",
        "",
    ],
)
def test_otherwise_the_brands_home_or_no_link(make_app, referer):
    headers = {"Referer": referer} if referer else {}
    plain = make_app().test_client()
    page = plain.get("/skilljar/checkout?purchase_id=NOT-AN-ID", headers=headers)
    assert back_link(page.text) is None
    branded = make_app(BRAND_HOME_URL="https://www.brand.test", BRAND_NAME="Acme Academy")
    page = branded.test_client().get("/skilljar/checkout?purchase_id=NOT-AN-ID", headers=headers)
    assert back_link(page.text) == ("https://www.brand.test", "Back to brand.test")


def test_french_error_page_link(client):
    order = make_order(state=OrderState.OPEN, redirect_url="https://academy.test/courses/py")
    refused = client.post(f"/orders/{order.reference}/pay", headers={"Accept-Language": "fr"})
    assert back_link(refused.text) == ("https://academy.test/courses/py", "Retour à academy.test")
