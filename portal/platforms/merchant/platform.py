"""Merchant systems (ERPs, custom sites) on the portal's own API (`portal/api`): a platform whose
"originating system" is told through signed outbound webhooks.

Fulfil emits `order.paid` (automatic capture) or `order.authorized` (manual capture: the merchant
captures on shipment) and queues the customer's receipt; cancel emits `order.cancelled` (or
`order.expired` for a link nobody paid in time); every refund, whoever made it, emits
`order.refunded`; a failed delayed payment `order.payment_failed`; a dispute `order.disputed` and
`order.dispute_closed` (with its outcome). The webhooks themselves are jobs, so a merchant's
outage is retried, never lost.
"""

from __future__ import annotations

from datetime import datetime

from portal.config import Settings
from portal.db import db
from portal.platforms import CheckoutOptions, Outcome, Platform
from portal.platforms.merchant.limits import increase_limit


class MerchantPlatform(Platform):
    name = "merchant"
    label = "Merchant API"

    def __init__(self, settings: Settings, recorder=None):
        self.settings = settings
        self.services = None  # set by portal.api.init_app: superseding calls Stripe

    def back_leaves(self, order) -> bool:
        """Stripe's Back goes straight to the merchant's cancel_url, when the merchant gave one."""
        return bool((order.platform_data or {}).get("cancel_url"))

    def checkout_options(self, order) -> CheckoutOptions:
        manual = order.capture_method == "manual"
        collect = (order.platform_data or {}).get("checkout_options") or {}
        return CheckoutOptions(
            tax_included=True,  # the merchant's items are the price; its own system does tax
            capture_method="manual" if manual else None,
            incremental_authorization=manual and increase_limit(self.settings, order) > 0,
            billing_address_collection=collect.get("billing_address_collection"),
            shipping_countries=tuple(collect.get("shipping_address_countries") or ()),
            tax_id_collection=bool(collect.get("tax_id_collection")),
            invoice_creation=bool(collect.get("invoice_creation")),
            allow_promotion_codes=bool(collect.get("allow_promotion_codes")),
            phone_number_collection=bool(collect.get("phone_number_collection")),
        )

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        from portal.api import capture, webhooks_out

        manual = order.capture_method == "manual"
        if (order.platform_data or {}).get("replaces"):
            capture.supersede(self.services, order)
        event = "order.authorized" if manual else "order.paid"
        with db.transaction() as session:
            event_id = webhooks_out.emit(session, self.settings, order, event)
        # The customer's receipt is queued with the fulfilment (portal.receipts decides who
        # sends it). The customer goes on to the merchant's success_url (kept on the order).
        return Outcome(
            redirect_url=None, note=f"merchant told: {event}", detail={"event": event_id}
        )

    def cancel(self, order) -> Outcome:
        from portal import mail, receipts
        from portal.api import webhooks_out

        data = order.platform_data or {}
        event = "order.expired" if data.get("expired") else "order.cancelled"
        with db.transaction() as session:
            event_id = webhooks_out.emit(session, self.settings, order, event)
            # A pay link the customer never paid: tell them it no longer works (the Credit Key
            # seed notifies the customer of a cancellation).
            if (
                data.get("mode") == "link"
                and order.paid_at is None
                and receipts.portal_sends(self.settings, order)
            ):
                mail.queue(
                    session,
                    "pay_link_cancelled",
                    order,
                    to=order.customer_email,
                    notice={"expired": bool(data.get("expired"))},
                )
        return Outcome(
            redirect_url=data.get("cancel_url"),
            note=f"merchant told: {event}",
            detail={"event": event_id},
        )

    refund_effects = {  # noqa: RUF012 - read only
        "full": "The merchant's endpoints receive order.refunded; the order becomes refunded.",
        "partial": "The merchant's endpoints receive order.refunded with this amount; the order "
        "becomes partially_refunded.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """Any refund (the API, the console, Stripe's dashboard, a lost dispute): `order.refunded`
        with the refund; its event id comes from the refund id, so a retry is the same event."""
        from portal.api import webhooks_out

        refund = refund or {}
        refund_id = refund.get("id") or f"total-{order.amount_refunded_minor}"
        with db.transaction() as session:
            event_id = webhooks_out.emit(
                session,
                self.settings,
                order,
                "order.refunded",
                discriminator=str(refund_id),
                extra={
                    "refund": {
                        "id": refund.get("id"),
                        "amount": amount_minor,
                        "reason": refund.get("reason"),
                        "source": refund.get("source"),
                        "status": "succeeded",
                    }
                },
            )
        return Outcome(
            redirect_url=None, note="merchant told: order.refunded", detail={"event": event_id}
        )

    def payment_failed(self, order, reason: str) -> Outcome:
        """A delayed payment (a bank debit) failed after checkout: `order.payment_failed`."""
        from portal.api import webhooks_out

        with db.transaction() as session:
            event_id = webhooks_out.emit(
                session,
                self.settings,
                order,
                "order.payment_failed",
                extra={"failure": {"message": reason}},
            )
        return Outcome(
            redirect_url=None,
            note="merchant told: order.payment_failed",
            detail={"event": event_id},
        )

    def dispute(self, order, dispute: dict) -> Outcome:
        """`order.disputed` when a dispute opens, `order.dispute_closed` with its outcome."""
        from portal.api import webhooks_out

        event = "order.disputed" if dispute["outcome"] is None else "order.dispute_closed"
        body = {
            "id": dispute["id"],
            "amount": dispute["amount_minor"],
            "currency": dispute["currency"].lower(),
            "reason": dispute["reason"],
            "status": dispute["status"],
            "outcome": dispute["outcome"],
        }
        with db.transaction() as session:
            event_id = webhooks_out.emit(
                session,
                self.settings,
                order,
                event,
                discriminator=dispute["id"],
                extra={"dispute": body},
            )
        return Outcome(
            redirect_url=None, note=f"merchant told: {event}", detail={"event": event_id}
        )
