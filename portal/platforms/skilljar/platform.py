"""Skilljar, as an "external payment processor": fulfil, cancel, refund and disputes are
writes to the purchase (`portal.platforms.skilljar.client`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from portal.config import Settings
from portal.http import classify
from portal.models import OrderState
from portal.money import format_money
from portal.platforms import Outcome, Platform
from portal.platforms.skilljar.client import SkilljarClient, json_body


class SkilljarPlatform(Platform):
    name = "skilljar"
    label = "Skilljar"

    def __init__(self, settings: Settings, recorder=None):
        self.client = SkilljarClient(settings, recorder)

    def _already(self, order, wanted: str) -> bool:
        purchase = self.client.get_purchase(order.platform_ref, order_id=order.id)
        return purchase is not None and purchase.get("state") == wanted

    def _fulfill(self, order, body: dict, what: str) -> Outcome:
        response = self.client.fulfill(order.platform_ref, body, order_id=order.id)
        if response.ok:
            data = json_body(response, what)
            return Outcome(
                redirect_url=data.get("redirect_url"),
                note=f"Skilljar {what}: {body['state']}",
                detail={"state": (data.get("purchase") or {}).get("state")},
            )
        error = classify(response, f"Skilljar {what}")
        if not error.transient and self._already(order, body["state"]):
            # It went through earlier (our answer was lost): "already done" is success.
            return Outcome(redirect_url=None, note=f"Skilljar purchase already {body['state']}")
        raise error

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        if retry and self._already(order, "SUCCESS"):
            return Outcome(redirect_url=None, note="Skilljar purchase already SUCCESS")
        if order.tax_paid_minor:
            # Skilljar's receipts and registration emails show the tax actually charged.
            self.client.update_purchase(
                order.platform_ref, {"tax_price_cents": order.tax_paid_minor}, order_id=order.id
            )
        response_data = json.dumps(
            {
                "portal_order": order.reference,
                "checkout_session": order.stripe_session_id,
                "amount_paid": order.amount_paid_minor,
                "tax_paid": order.tax_paid_minor,
                "currency": order.currency,
            },
            separators=(",", ":"),
        )
        body = {"state": "SUCCESS", "payment_processor_response_data": response_data}
        if order.stripe_payment_intent_id:
            body["payment_processor_order_id"] = order.stripe_payment_intent_id
        return self._fulfill(order, body, "fulfil")

    def cancel(self, order) -> Outcome:
        return self._fulfill(order, {"state": "CANCELLED"}, "cancel")

    def payment_failed(self, order, reason: str) -> Outcome:
        body = {"state": "FAILED", "error_msg": (reason or "The payment failed.")[:500]}
        return self._fulfill(order, body, "payment failed")

    refund_effects = {  # noqa: RUF012 - read only
        "full": "Skilljar: the purchase becomes REFUNDED (with refunded_at and refund_cents); "
        "the learner loses access.",
        "partial": "Skilljar: only refund_cents changes; the purchase stays SUCCESS and the "
        "learner keeps the course.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """Refunded in full (the order is `refunded`): the purchase becomes `REFUNDED` with
        `refunded_at` and `refund_cents`. Refunded in part: only `refund_cents` changes and the
        purchase stays `SUCCESS` (the learner keeps the course). `refund_cents` is always the
        running total, so a repeat, or two refunds reported out of order, end the same."""
        full = order.state == OrderState.REFUNDED
        fields: dict = {"refund_cents": order.amount_refunded_minor}
        if full:
            refunded_at = (refunded_at or datetime.now(UTC)).astimezone(UTC)
            fields["refunded_at"] = refunded_at.isoformat().replace("+00:00", "Z")
            fields["state"] = "REFUNDED"
        data = self.client.update_purchase(order.platform_ref, fields, order_id=order.id)
        total = format_money(order.amount_refunded_minor, order.currency)
        return Outcome(
            redirect_url=None,
            note=f"Skilljar told: {total} refunded in all"
            + ("" if full else " (partial: the purchase stays SUCCESS)"),
            detail={"state": data.get("state"), "refund_cents": data.get("refund_cents")},
        )

    def dispute(self, order, dispute: dict) -> Outcome:
        """Skilljar's v1 purchase states have no "disputed"; `FLAGGED` is the one that says the
        purchase is in question without claiming the money came back (`REFUNDED`) or never came
        (`FAILED`). Opened: `FLAGGED`. Won: back to `SUCCESS`. Lost: nothing here, the lost
        dispute reaches `refund` as a full refund (`REFUNDED`)."""
        if dispute["outcome"] == "lost":
            return Outcome(
                redirect_url=None, note="Skilljar: a lost dispute is reported as a refund"
            )
        if dispute["outcome"] == "won" and order.state == OrderState.REFUNDED:
            return Outcome(redirect_url=None, note="Skilljar: the order is refunded; left as it is")
        state = "FLAGGED" if dispute["outcome"] is None else "SUCCESS"
        data = self.client.update_purchase(order.platform_ref, {"state": state}, order_id=order.id)
        return Outcome(
            redirect_url=None,
            note=f"Skilljar told: purchase {state} (dispute {dispute['outcome'] or 'opened'})",
            detail={"state": data.get("state"), "dispute": dispute["id"]},
        )
