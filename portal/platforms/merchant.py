"""Merchant systems (ERPs, custom sites) on the portal's own API (`portal/api`): a platform whose
"originating system" is told through signed outbound webhooks.

Fulfil emits `order.paid` (automatic capture) or `order.authorized` (manual capture: the merchant
captures on shipment) and queues the customer's receipt; cancel emits `order.cancelled` (or
`order.expired` for a link nobody paid in time); a console refund emits `order.refunded`. The
webhooks themselves are jobs, so a merchant's outage is retried, never lost.
"""

from __future__ import annotations

from datetime import datetime

from portal.db import db
from portal.platforms import CheckoutOptions, Outcome, Platform


class MerchantPlatform(Platform):
    name = "merchant"
    label = "Merchant API"

    def __init__(self, settings: dict, recorder=None):
        self.settings = settings
        self.services = None  # set by portal.api.init_app: superseding calls Stripe

    def checkout_options(self, order) -> CheckoutOptions:
        manual = order.capture_method == "manual"
        collect = (order.platform_data or {}).get("checkout_options") or {}
        return CheckoutOptions(
            tax_included=True,  # the merchant's items are the price; its own system does tax
            capture_method="manual" if manual else None,
            incremental_authorization=manual and self.settings["AUTH_INCREASE_LIMIT_PERCENT"] > 0,
            billing_address_collection=collect.get("billing_address_collection"),
            shipping_countries=tuple(collect.get("shipping_address_countries") or ()),
            tax_id_collection=bool(collect.get("tax_id_collection")),
            invoice_creation=bool(collect.get("invoice_creation")),
            allow_promotion_codes=bool(collect.get("allow_promotion_codes")),
            phone_number_collection=bool(collect.get("phone_number_collection")),
        )

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        from portal import mail
        from portal.api import orders, webhooks_out

        manual = order.capture_method == "manual"
        if (order.platform_data or {}).get("replaces"):
            orders.supersede(self.services, order)
        event = "order.authorized" if manual else "order.paid"
        with db.transaction() as session:
            event_id = webhooks_out.emit(session, self.settings, order, event)
            if not manual and order.customer_email:
                mail.queue(session, "receipt", order, to=order.customer_email)
        # The customer goes on to the merchant's success_url (kept on the order at creation).
        return Outcome(
            redirect_url=None, note=f"merchant told: {event}", detail={"event": event_id}
        )

    def cancel(self, order) -> Outcome:
        from portal.api import webhooks_out

        data = order.platform_data or {}
        event = "order.expired" if data.get("expired") else "order.cancelled"
        with db.transaction() as session:
            event_id = webhooks_out.emit(session, self.settings, order, event)
        return Outcome(
            redirect_url=data.get("cancel_url"),
            note=f"merchant told: {event}",
            detail={"event": event_id},
        )

    def refund(self, order, amount_minor: int, *, refunded_at: datetime | None = None) -> Outcome:
        """A refund made in the operator console."""
        from portal.api import webhooks_out

        with db.transaction() as session:
            event_id = webhooks_out.emit(
                session,
                self.settings,
                order,
                "order.refunded",
                discriminator=f"console-{order.amount_refunded_minor}",
                extra={"refund": {"amount": amount_minor, "reason": "refunded by an operator"}},
            )
        return Outcome(
            redirect_url=None, note="merchant told: order.refunded", detail={"event": event_id}
        )
