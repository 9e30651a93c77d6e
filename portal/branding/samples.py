"""Sample pages for the marketer's preview and for checking an override before it is published:
every state a learner can meet (open, cancelled, processing, paid, fulfilled, refunded, expired,
each error), long titles, zero-decimal (JPY) and three-decimal (KWD) currencies, promo and tax
lines. Each sample is the template name plus the plain context its view would pass."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from portal.errors import MESSAGES

LONG_TITLE = (
    "Advanced Machine Learning Engineering for Production Systems: Feature Stores, Model "
    "Monitoring and Continuous Delivery (Professional Certificate, 12-week cohort)"
)


def sample_order(**fields) -> dict:
    now = datetime(2026, 3, 14, 9, 30, tzinfo=UTC)
    order = {
        "id": 0,
        "reference": "ord_preview_sample_000",
        "platform": "skilljar",
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


def _paid(**fields) -> dict:
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
        {"status": status, "title": title, "message": message, "back_url": None},
    )


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
        _status("paid", "Payment received, finishing", _paid(state="paid"), waiting=True),
        _status("fulfilled", "Paid and enrolled", _paid(state="fulfilled")),
        _status("fulfil-failed", "Paid, enrolment delayed", _paid(state="fulfil_failed")),
        _status("cancelled-order", "Order cancelled", sample_order(state="cancelled")),
        _status(
            "payment-failed",
            "Payment failed",
            sample_order(state="payment_failed", failure_reason="Your card was declined."),
        ),
        _status(
            "refunded",
            "Refunded",
            _paid(state="refunded", amount_refunded_minor=7840),
        ),
        _status("expired", "Checkout expired", sample_order(state="expired")),
        Sample(
            "already-enrolled",
            "OpenLearning: already enrolled",
            "openlearning/already_enrolled.html",
            _paid(state="fulfilled", platform="openlearning"),
            {"continue_url": "https://www.openlearning.com/courses/sample"},
        ),
        *[_error(status) for status in (400, 403, 404, 405, 429, 500, 503)],
    ]


def sample(key: str) -> Sample | None:
    return next((s for s in all_samples() if s.key == key), None)


def samples_for(template: str) -> list[Sample]:
    """The samples whose page uses `template`: a page's own samples; every sample for the shared
    frame, macros and partials (they appear on many pages)."""
    own = [s for s in all_samples() if s.template == template]
    if own:
        return own
    if template == "errors/generic.html":
        return [s for s in all_samples() if s.template.startswith("errors/")]
    return all_samples()
