"""How far a merchant's authorised total may grow in place: read by the merchant platform (whether
to ask Stripe for an incremental authorisation) and by the API's item changes (raise the hold, or
send a new pay link). Imports nothing of the portal, so both can use it."""

from __future__ import annotations

from portal.config import Settings


def increase_limit(settings: Settings, order, authorized: int | None = None) -> int:
    """How much an authorised total may grow and be raised in place (minor units): the absolute
    cap for the order's currency (`PORTAL_AUTH_INCREASE_LIMIT`, the seed's $100), or the
    percentage of the hold (`PORTAL_AUTH_INCREASE_LIMIT_PERCENT`), whichever is larger."""
    absolute = settings.auth_increase_limit.get(order.currency, 0)
    percent = settings.auth_increase_limit_percent
    if authorized is None:
        return max(absolute, percent)  # before the hold exists: whether any increase can be
    return max(absolute, authorized * percent // 100)
