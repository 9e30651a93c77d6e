"""Sample pages for the marketer's preview and for checking an override before it is published:
every state a learner can meet (open, cancelled, processing, paid, fulfilled, refunded, expired,
each error), long titles, zero-decimal (JPY) and three-decimal (KWD) currencies, promo and tax
lines, each platform's own pages (its spec's `preview_samples`: a subscription review page with
period, coupon, free trial, tax included in the price) and the pay-link and receipt emails (HTML
and plain text). Each sample is the template name plus the plain context its view (or the
mailer) would pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from portal.branding.emails import email_colours
from portal.error_texts import MESSAGES
from portal.platforms import registry

LONG_TITLE = (
    "Advanced Machine Learning Engineering for Production Systems: Feature Stores, Model "
    "Monitoring and Continuous Delivery (Professional Certificate, 12-week cohort)"
)


def sample_order(**fields) -> dict:
    now = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
    order = {
        "id": 0,
        "reference": "ord_preview_sample_000",
        "platform": registry.names()[0],  # a course platform's purchase
        "platform_ref": "p1sample",
        "state": "open",
        "description": "Introduction to Python",
        "sku": "PY-101",
        "quantity": 2,
        "currency": "USD",
        "amount_minor": 7840,
        "list_unit_minor": 4900,
        "promo_code": "LAUNCH20",
        "tax_mode": "none",
        "tax_country": None,
        "tax_rate": None,
        "tax_minor": 0,
        "customer_email": "learner@example.com",
        "customer_name": "Grace Hopper",
        "payer_email": None,
        "checkout_details": None,
        "locale": None,
        "platform_data": {},
        "stripe_session_id": None,
        "stripe_session_url": None,
        "stripe_session_expires_at": None,
        "session_attempt": 0,
        "stripe_payment_intent_id": None,
        "amount_paid_minor": None,
        "tax_paid_minor": None,
        "amount_refunded_minor": 0,
        "disputed": False,
        "redirect_url": "https://academy.example.com/thanks",
        "failure_reason": None,
        "created_at": now,
        "updated_at": now,
        "paid_at": None,
        "fulfilled_at": None,
        "merchant_key_id": None,
        "capture_method": None,
        "amount_authorized_minor": None,
        "amount_captured_minor": None,
    }
    order.update(fields)
    order["total_minor"] = order["amount_minor"] + (order["tax_minor"] or 0)
    order["is_paid"] = order["state"] in {
        "paid",
        "fulfilled",
        "fulfil_failed",
        "refunded",
        "partially_refunded",
    }
    return order


def paid_order(**fields) -> dict:
    return sample_order(
        amount_paid_minor=fields.get("amount_minor", 7840) + fields.get("tax_paid_minor", 0),
        **{"tax_paid_minor": 0, **fields},
    )


NO_TAX = {"mode": "none", "country": None, "rate": None, "amount_minor": 0, "label": None}
FIXED_TAX = {
    "mode": "fixed",
    "country": "GB",
    "rate": "20",
    "amount_minor": 1568,
    "label": "VAT (20%)",
}
STRIPE_TAX = {"mode": "stripe", "country": None, "rate": None, "amount_minor": 0, "label": None}


@dataclass(frozen=True)
class Sample:
    key: str
    label: str
    template: str
    order: dict | None
    context: dict = field(default_factory=dict)


def _review(key, label, order, quote=NO_TAX, cancelled=False, countries=("GB",)) -> Sample:
    saving = None
    if order["promo_code"] and order["list_unit_minor"] is not None:
        saving = order["list_unit_minor"] * order["quantity"] - order["amount_minor"]
        saving = saving if saving > 0 else None
    return Sample(
        key,
        label,
        "review.html",
        order,
        {
            "quote": quote,
            "countries": list(countries),
            "promo_saving": saving,
            "cancelled": cancelled,
            "total_minor": order["amount_minor"] + quote["amount_minor"],
        },
    )


def _status(key, label, order, waiting=False) -> Sample:
    return Sample(
        key,
        label,
        "status.html",
        order,
        {
            "waiting": waiting,
            "auto": waiting,
            "interval": 3,
            "continue_url": "https://academy.example.com/thanks",
        },
    )


def _error(status: int) -> Sample:
    title, message = MESSAGES[status]
    template = f"errors/{status}.html" if status != 429 else "errors/generic.html"
    return Sample(
        f"error-{status}",
        f"Error {status}: {title}",
        template,
        None,
        {
            "status": status,
            "title": title,
            "message": message,
            "back_url": "https://academy.example.com/",
            "back_label": "academy.example.com",
        },
    )


# The default theme's colours, as an email's inline styles read them (the console's preview
# uses those of the brand it is asked for).
EMAIL_COLOURS = email_colours(None)
MERCHANT_ITEMS = [
    {"name": "Seat licence", "unit_amount": 4900, "quantity": 40},
    {"name": "Onboarding workshop (half a day, remote)", "unit_amount": 25000, "quantity": 1},
]


def _email(key, label, template, order, *, reference, manual, notice=None) -> Sample:
    listed = order["platform_data"].get("items") or []
    items = [
        {
            "name": item["name"],
            "quantity": item["quantity"],
            "amount_minor": item["unit_amount"] * item["quantity"],
        }
        for item in listed
    ] or [
        {
            "name": order["description"],
            "quantity": order["quantity"],
            "amount_minor": order["amount_minor"],
        }
    ]
    paid = order["amount_paid_minor"] or 0
    return Sample(
        key,
        label,
        template,
        order,
        {
            "colours": EMAIL_COLOURS,
            "items": items,
            "reference": reference,
            "pay_url": f"https://pay.example.com/orders/{order['reference']}",
            "link_days": 7,
            "manual": manual,
            "charged_minor": (order["amount_captured_minor"] or 0) if manual else paid,
            "notice": {
                "amount_minor": 0,
                "refunded_minor": 0,
                "full": False,
                "expired": False,
                "recovery_url": "",
                "recovery_until": None,
                **(notice or {}),
            },
        },
    )


def _email_samples() -> list[Sample]:
    merchant = {
        "platform": "merchant",
        "platform_ref": "chs_sample",
        "description": "Seat licence and 1 more item",
        "sku": None,
        "quantity": 41,
        "list_unit_minor": None,
        "promo_code": None,
        "customer_email": "buyer@example.com",
        "customer_name": "Ada Lovelace",
        "merchant_key_id": 1,
        "amount_minor": 446000,
    }
    link = sample_order(
        **merchant,
        capture_method="manual",
        platform_data={"items": MERCHANT_ITEMS, "reference": "SO-1001", "mode": "link"},
    )
    single = sample_order(
        platform="merchant",
        platform_ref="chs_sample_2",
        description="Annual support plan",
        sku=None,
        quantity=1,
        currency="JPY",
        amount_minor=98000,
        list_unit_minor=None,
        promo_code=None,
        customer_name=None,
        capture_method="automatic",
        platform_data={"mode": "link"},
    )
    receipt = paid_order(
        state="paid",
        **merchant,
        capture_method="automatic",
        platform_data={"items": MERCHANT_ITEMS, "reference": "SO-1001", "mode": "link"},
    )
    samples = []
    for kind, shown in (("html", "HTML"), ("txt", "plain text")):
        samples += [
            _email(
                f"email-pay-link-{kind}",
                f"Email, pay link ({shown}): items, capture on shipping",
                f"email/pay_link.{kind}",
                link,
                reference="SO-1001",
                manual=True,
            ),
            _email(
                f"email-pay-link-single-{kind}",
                f"Email, pay link ({shown}): one product, JPY, no name or reference",
                f"email/pay_link.{kind}",
                single,
                reference=None,
                manual=False,
            ),
            _email(
                f"email-receipt-{kind}",
                f"Email, receipt ({shown})",
                f"email/receipt.{kind}",
                receipt,
                reference="SO-1001",
                manual=False,
            ),
            _email(
                f"email-refund-partial-{kind}",
                f"Email, refund issued ({shown}): part of a course purchase",
                f"email/refund_issued.{kind}",
                paid_order(state="partially_refunded", amount_refunded_minor=3920),
                reference=None,
                manual=False,
                notice={"amount_minor": 3920, "refunded_minor": 3920},
            ),
            _email(
                f"email-refund-full-{kind}",
                f"Email, refund issued ({shown}): refunded in full",
                f"email/refund_issued.{kind}",
                paid_order(state="refunded", amount_refunded_minor=7840),
                reference=None,
                manual=False,
                notice={"amount_minor": 7840, "refunded_minor": 7840, "full": True},
            ),
            _email(
                f"email-payment-failed-{kind}",
                f"Email, delayed payment failed ({shown})",
                f"email/payment_failed.{kind}",
                sample_order(state="payment_failed"),
                reference=None,
                manual=False,
            ),
            _email(
                f"email-checkout-recovery-{kind}",
                f"Email, finish your purchase ({shown}): an abandoned checkout",
                f"email/checkout_recovery.{kind}",
                sample_order(state="expired"),
                reference=None,
                manual=False,
                notice={
                    "recovery_url": "https://checkout.stripe.com/c/pay/cs_test_recovery",
                    "recovery_until": "2027-01-07T10:00:00+00:00",
                },
            ),
            _email(
                f"email-pay-link-cancelled-{kind}",
                f"Email, pay link cancelled ({shown})",
                f"email/pay_link_cancelled.{kind}",
                link,
                reference="SO-1001",
                manual=True,
            ),
        ]
    return samples


def all_samples() -> list[Sample]:
    return [
        _review("open", "Review: open, promo code, quantity 2", sample_order()),
        _review("cancelled", "Review: payment not completed", sample_order(), cancelled=True),
        _review(
            "tax",
            "Review: VAT line, country choice",
            sample_order(tax_mode="fixed", tax_country="GB", tax_rate="20", tax_minor=1568),
            quote=FIXED_TAX,
            countries=("GB", "DE", "FR"),
        ),
        _review("stripe-tax", "Review: tax calculated at payment", sample_order(), STRIPE_TAX),
        _review(
            "long-title",
            "Review: long title",
            sample_order(description=LONG_TITLE, sku="ML-PROD-2026-COHORT-12"),
        ),
        _review(
            "jpy",
            "Review: JPY (no decimals)",
            sample_order(currency="JPY", amount_minor=12800, list_unit_minor=8000),
        ),
        _review(
            "kwd",
            "Review: KWD (three decimals)",
            sample_order(currency="KWD", amount_minor=24750, list_unit_minor=15000, quantity=2),
        ),
        _review(
            "free",
            "Review: free enrolment",
            sample_order(amount_minor=0, list_unit_minor=4900, quantity=1, promo_code="FREE100"),
        ),
        _status("processing", "Processing", sample_order(state="processing"), waiting=True),
        _status("paid", "Payment received, finishing", paid_order(state="paid"), waiting=True),
        _status("fulfilled", "Paid and enrolled", paid_order(state="fulfilled")),
        _status("fulfil-failed", "Paid, enrolment delayed", paid_order(state="fulfil_failed")),
        _status("cancelled-order", "Order cancelled", sample_order(state="cancelled")),
        _status(
            "payment-failed",
            "Payment failed",
            sample_order(state="payment_failed", failure_reason="Your card was declined."),
        ),
        _status(
            "refunded",
            "Refunded",
            paid_order(state="refunded", amount_refunded_minor=7840),
        ),
        _status("expired", "Checkout expired", sample_order(state="expired")),
        *[_error(status) for status in (400, 403, 404, 405, 429, 500, 503)],
        *registry.preview_samples(),
        *_email_samples(),
    ]


def sample(key: str) -> Sample | None:
    return next((s for s in all_samples() if s.key == key), None)


def samples_for(template: str) -> list[Sample]:
    """The samples whose page uses `template`: a page's own samples; every sample for the shared
    frame, macros and partials (they appear on many pages)."""
    everything = all_samples()
    own = [s for s in everything if s.template == template]
    if own:
        return own
    if template == "errors/generic.html":
        return [s for s in everything if s.template.startswith("errors/")]
    # An email's layout and partials appear in the emails only; the pages' frame, macros and
    # partials in the pages only.
    emails = [s for s in everything if s.template.startswith("email/")]
    if template.startswith("email/"):
        return emails
    return [s for s in everything if not s.template.startswith("email/")]
