"""A tax line only when tax applies or the platform says its price includes tax: never a
"Tax 0.00" on every order (issue 27), on the review page of any platform, pay links included."""

from __future__ import annotations

import pytest

from portal.models import OrderState
from tests.admin_support import make_order


def review(client, **fields):
    order = make_order(state=OrderState.OPEN, **fields)
    page = client.get(f"/orders/{order.reference}")
    assert page.status_code == 200
    return page.text


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="skilljar"),
        pytest.param(
            {"platform": "merchant", "platform_ref": "inv-1", "platform_data": {}},
            id="merchant-pay-link",
        ),
        pytest.param(
            {
                "platform": "openlearning",
                "platform_ref": "jti-1",
                "quantity": 1,
                "promo_code": None,
            },
            id="openlearning",
        ),
    ],
)
def test_no_tax_line_when_no_tax_applies(client, fields):
    page = review(client, **fields)
    assert "Tax" not in page
    assert '<dt class="total">Total</dt><dd class="total">$78.40</dd>' in page


def test_tax_line_when_the_portal_charges_tax(make_app):
    fixed = make_app(TAX_MODE="fixed", TAX_RATES="GB:20").test_client()
    page = review(fixed)
    assert "<dt>Tax (GB 20%)</dt><dd>$15.68</dd>" in page
    assert '<dd class="total">$94.08</dd>' in page


def test_tax_line_when_stripe_calculates_it(make_app):
    page = review(make_app(TAX_MODE="stripe").test_client(), platform_ref="p2abc")
    assert "<dt>Tax</dt><dd>Calculated at payment</dd>" in page
