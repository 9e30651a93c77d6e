"""Stripe, through its official SDK: the gateway the core calls (`gateway`), what a Checkout
Session is made of (`session`), and the HTTP client the SDK sends with (`http_client`: the
request id on every call, a back-off on Stripe's rate limit).
"""

from __future__ import annotations

from portal.stripe_gateway.gateway import OffSessionCharge, StripeGateway
from portal.stripe_gateway.session import (
    CheckoutRequest,
    Lines,
    checkout_locale,
    product_lines,
)

__all__ = [
    "CheckoutRequest",
    "Lines",
    "OffSessionCharge",
    "StripeGateway",
    "checkout_locale",
    "product_lines",
]
