"""Abandoned checkouts, opt-in per brand: Stripe's own recovery and a branded "finish your
purchase" email.

For an order whose brand opted in (`PORTAL_CHECKOUT_RECOVERY_BRANDS`), the Checkout Session asks
Stripe to keep a recovery link when it expires (`after_expiration.recovery`) and to ask the
buyer's consent to promotional email (`consent_collection.promotions=auto`). When such a session
expires (`checkout.session.expired`) and the buyer consented (`consent.promotions=opt_in`), the
portal sends one branded `checkout_recovery` email, in the buyer's language, through the template
system and the mail job, with Stripe's recovery URL. A buyer who did not consent gets nothing.
An order paid through a recovery link (a session with `recovered_from`) is marked on its
timeline (`recovered`), and the console's dashboard sums that recovered revenue.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from sqlalchemy import func, select

from portal.branding.brands import find_brand_and_name
from portal.config import Settings
from portal.db import db
from portal.models import Order, OrderEvent
from portal.orders import timeline

log = logging.getLogger("portal.recovery")

RECOVERED = "recovered"  # the timeline kind of an order paid through a recovery link
EVERY_BRAND = "*"


def offered(settings: Settings, order: Order) -> bool:
    """Whether the order's brand opted in to abandoned-checkout recovery."""
    chosen = settings.checkout_recovery_brands or ()
    if not chosen:
        return False
    if EVERY_BRAND in chosen:
        return True
    try:
        with db.reader() as session:
            brand, _name = find_brand_and_name(session, order)
    except Exception:  # noqa: BLE001 - no recovery is the safe answer when the brand is unknown
        log.exception("brand lookup failed: no checkout recovery for order %s", order.reference)
        return False
    return brand is not None and str(brand.id) in chosen


def expired(services, order: Order, stripe_session: dict) -> bool:
    """A Checkout Session of `order` expired: send the "finish your purchase" email if the brand
    opted in, Stripe kept a recovery link, and the buyer consented. Once per session (the mail
    job's key). Returns whether one was queued."""
    if order.is_paid or not offered(services.settings, order):
        return False
    recovery = (stripe_session.get("after_expiration") or {}).get("recovery") or {}
    url = recovery.get("url")
    consent = (stripe_session.get("consent") or {}).get("promotions")
    details = stripe_session.get("customer_details") or {}
    email = details.get("email") or stripe_session.get("customer_email") or order.customer_email
    if not ((isinstance(url, str) and url.startswith("https://")) or _sandbox_url(services, url)):
        return False
    if consent != "opt_in" or not email:
        return False
    until = recovery.get("expires_at")
    notice = {
        "recovery_url": url,
        "recovery_until": (
            datetime.fromtimestamp(until, UTC).isoformat() if isinstance(until, int) else None
        ),
    }
    from portal import mail  # mail reaches checkout, which records recovered payments here

    with db.transaction() as session:
        mail.queue(
            session, "checkout_recovery", order, to=email, key=stripe_session["id"], notice=notice
        )
        timeline.record(
            order.id,
            "note",
            "the buyer consented: a recovery email is queued",
            {"session": stripe_session["id"]},
            session=session,
        )
    return True


def _sandbox_url(services, url) -> bool:
    """The sandbox's stand-in serves its recovery links over the portal's own http URL."""
    base = services.settings.public_url.rstrip("/") + "/"
    return bool(services.settings.sandbox) and isinstance(url, str) and url.startswith(base)


def record_recovered(session, order: Order, stripe_session: dict, amount: int, currency: str):
    """In the payment's own transaction (once: the `-> paid` compare-and-set won): the order was
    paid through a recovery link."""
    recovered_from = stripe_session.get("recovered_from")
    if not recovered_from:
        return
    timeline.record(
        order.id,
        RECOVERED,
        f"paid through the recovery link of {recovered_from}",
        {"recovered_from": recovered_from, "amount": amount, "currency": currency},
        session=session,
    )


def revenue(since: datetime) -> list[tuple[str, int, int]]:
    """(currency, orders, amount paid) of orders paid through a recovery link since `since`."""
    with db.reader() as session:
        rows = session.execute(
            select(Order.currency, func.count(Order.id), func.sum(Order.amount_paid_minor))
            .where(
                Order.id.in_(
                    select(OrderEvent.order_id).where(
                        OrderEvent.kind == RECOVERED, OrderEvent.created_at >= since
                    )
                )
            )
            .group_by(Order.currency)
            .order_by(Order.currency)
        ).all()
    return [(currency, int(count), int(total or 0)) for currency, count, total in rows]
