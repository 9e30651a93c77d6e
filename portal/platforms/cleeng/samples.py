"""Cleeng's samples for the marketer's preview (portal.branding.samples): its subscription review
page with a coupon, a cancelled payment, a free trial and a zero-decimal currency, all with the
tax included in the price."""

from __future__ import annotations

from portal.branding.samples import LONG_TITLE, Sample, sample_order
from portal.platforms.cleeng.review import REVIEW_TEMPLATE, review_data


def _cleeng(key, label, order_fields: dict, data: dict, cancelled=False) -> Sample:
    order = sample_order(
        platform="cleeng",
        platform_ref="343967543",
        quantity=1,
        promo_code=None,
        customer_email="viewer@example.com",
        customer_name=None,
        redirect_url="https://publisher.example.com/welcome?orderId=343967543",
        **order_fields,
    )
    order["platform_data"] = data
    return Sample(
        key,
        label,
        REVIEW_TEMPLATE,
        order,
        {"data": review_data(data), "cancelled": cancelled},
    )


# Cleeng's own breakdown of a monthly offer: €10.00 before tax, a 20% coupon, 21% Dutch VAT
# included in the €9.68 charged.
CLEENG_MONTHLY = {
    "cleeng_order_id": "343967543",
    "customer_id": "927751142",
    "offer_id": "S619117184_NL",
    "period": "month",
    "country": "NL",
    "offer_price_minor": 1000,
    "discount_minor": 200,
    "tax_minor": 168,
    "tax_percent": "21",
    "trial": False,
    "discount_type": "coupon",
    "coupon_code": "WELCOME20",
    "discounted_minor": 800,
    "fees_minor": 0,
    "tax_added": True,
    "recurring": {"amount_minor": 1210, "period": "month", "trial_days": 0, "trial_periods": 0},
}
CLEENG_TRIAL = {
    **CLEENG_MONTHLY,
    "offer_id": "S838562951_NL",
    "period": "year",
    "offer_price_minor": 10000,
    "discount_minor": 10000,
    "tax_minor": 0,
    "trial": True,
    "discount_type": "trial",
    "coupon_code": None,
    "discounted_minor": 0,
    "recurring": {"amount_minor": 12100, "period": "year", "trial_days": 7, "trial_periods": 0},
}
CLEENG_WEEKLY_JPY = {
    **CLEENG_MONTHLY,
    "offer_id": "S500700900_JP",
    "period": "week",
    "country": "JP",
    "offer_price_minor": 500,
    "discount_minor": 0,
    "tax_minor": 50,
    "tax_percent": "10",
    "discount_type": None,
    "coupon_code": None,
    "discounted_minor": 500,
    "tax_added": True,
    "recurring": {"amount_minor": 550, "period": "week", "trial_days": 0, "trial_periods": 0},
}


def preview_samples() -> list[Sample]:
    monthly = {
        "description": "Premium Monthly",
        "sku": "S619117184_NL",
        "currency": "EUR",
        "amount_minor": 968,
        "list_unit_minor": 1000,
    }
    return [
        _cleeng(
            "cleeng-open", "Cleeng: subscription, coupon, tax included", monthly, CLEENG_MONTHLY
        ),
        _cleeng(
            "cleeng-cancelled",
            "Cleeng: payment not completed",
            monthly,
            CLEENG_MONTHLY,
            cancelled=True,
        ),
        _cleeng(
            "cleeng-trial",
            "Cleeng: free trial (card saved, nothing charged)",
            {
                "description": "Premium Annual",
                "sku": "S838562951_NL",
                "currency": "EUR",
                "amount_minor": 0,
                "list_unit_minor": 10000,
            },
            CLEENG_TRIAL,
        ),
        _cleeng(
            "cleeng-jpy",
            "Cleeng: weekly, JPY (no decimals), long title",
            {
                "description": LONG_TITLE,
                "sku": "S500700900_JP",
                "currency": "JPY",
                "amount_minor": 550,
                "list_unit_minor": 500,
            },
            CLEENG_WEEKLY_JPY,
        ),
    ]
