"""Who sends the learner's receipt and notices, per platform source: `PORTAL_<PLATFORM>_RECEIPTS`
(`PORTAL_SKILLJAR_RECEIPTS`, `PORTAL_OPENLEARNING_RECEIPTS`, `PORTAL_CLEENG_RECEIPTS`,
`PORTAL_MERCHANT_RECEIPTS`), one of:

- `portal` (the default): the portal emails a branded receipt once the platform confirmed the
  purchase (on capture, for an authorisation), and the notices: a delayed payment that failed, a
  refund, a cancelled pay link. Only when the portal can send mail (`PORTAL_SMTP_URL`, or the
  sandbox's caught mail) and knows the learner's address.
- `stripe`: Stripe emails its receipt (`payment_intent_data.receipt_email`), and its refund
  receipts; the portal sends none.
- `platform`: the platform sends its own; the portal sends none.
- `none`: nobody; the review page promises nothing.

The review page promises a receipt only when one of these will send it.
"""

from __future__ import annotations

from portal.config import RECEIPT_SENDERS as SENDERS  # noqa: F401 - the choices, named here
from portal.config import Settings


def mail_available(settings: Settings) -> bool:
    return bool(settings.smtp_url or settings.sandbox)


def sender(settings: Settings, order) -> str | None:
    """Who will send this order's receipt: "portal", "stripe", "platform", or None (nobody)."""
    chosen = getattr(settings, f"{str(order.platform).upper()}_RECEIPTS".lower(), None) or "portal"
    if chosen == "none":
        return None
    if chosen in ("portal", "stripe") and not order.customer_email:
        return None  # nobody to send it to
    if chosen == "portal" and not mail_available(settings):
        return None
    return chosen


def portal_sends(settings: Settings, order) -> bool:
    return sender(settings, order) == "portal"
