"""The checkout service: the rules above the order store (`portal.orders`).

Rules it keeps:
- amounts come from a platform (an `OrderDraft`) or the database, never from a browser;
- every state change is a move of the declared state machine (`portal.orders.move`);
- no outbound HTTP happens while a database transaction is open;
- `sync_session` is the one place a Stripe Checkout Session becomes a payment. The return page,
  the webhook, the expiry sweep and reconciliation all call it, and only the winner of the
  `-> paid` compare-and-set queues the fulfilment job.

Modules: `drafts` (opening an order), `tax` (quotes), `payment` (the Pay button), `sessions`
(payment results, the return page, cancel), `common` (the learner-facing error, `Next`).
"""

from portal.checkout.common import CheckoutError, Next, order_not_found
from portal.checkout.drafts import OrderDraft, open_order
from portal.checkout.payment import MIN_SESSION_LIFETIME, start_payment
from portal.checkout.sessions import (
    cancel_order,
    collected_details,
    handle_return,
    next_for_status,
    payment_failed,
    record_payment,
    refresh_status,
    sync_session,
)
from portal.checkout.tax import TaxQuote, quote_tax, tax_countries

__all__ = [
    "MIN_SESSION_LIFETIME",
    "CheckoutError",
    "Next",
    "OrderDraft",
    "TaxQuote",
    "cancel_order",
    "collected_details",
    "handle_return",
    "next_for_status",
    "open_order",
    "order_not_found",
    "payment_failed",
    "quote_tax",
    "record_payment",
    "refresh_status",
    "start_payment",
    "sync_session",
    "tax_countries",
]
