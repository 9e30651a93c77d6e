"""OpenLearning, as a "custom payment gateway": enrol the learner once the order is paid.

OpenLearning's "Join now" button posts the learner's browser to `POST /openlearning/enrol` with a
form field `jwt` (`tokens` verifies it, `routes` serves it); after payment the learner is
enrolled through the enrolment API (`client`).
"""

from __future__ import annotations

from datetime import datetime

from portal.config import Settings
from portal.http import UpstreamError
from portal.models import OrderState
from portal.money import format_money
from portal.platforms import Outcome, Platform
from portal.platforms.openlearning.client import OpenLearningClient
from portal.platforms.openlearning.tokens import PLATFORM, build_verifier


class OpenLearningPlatform(Platform):
    name = PLATFORM
    label = "OpenLearning"

    def __init__(self, settings: Settings, recorder=None):
        self.client = OpenLearningClient(settings, recorder)
        self.verifier = build_verifier(settings, self.client.http)

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        # Enrolling twice is harmless ("already enrolled" is success), so a retry needs no check.
        data = order.platform_data or {}
        user = data.get("user")
        if data.get("program") and data.get("institution") and user:
            target = f"program {data['program']}"
            result = self.client.enrol_in_program(
                data["institution"], data["program"], user, order_id=order.id
            )
        elif data.get("class") and user:
            target = f"class {data['class']}"
            result = self.client.enrol_in_class(data["class"], user, order_id=order.id)
        else:
            raise UpstreamError("order has no OpenLearning class or program", transient=False)
        # The order keeps the token's redirect_url: None leaves it as it is.
        return Outcome(
            redirect_url=None,
            note=f"OpenLearning: learner {user} {result} in {target}",
            detail={"enrolment": result, "user": user, "target": target},
        )

    def cancel(self, order) -> Outcome:
        return Outcome(
            redirect_url=order.redirect_url, note="nothing to tell OpenLearning: no enrolment made"
        )

    refund_effects = {  # noqa: RUF012 - read only
        "full": "OpenLearning has no refund API: you will be alerted to remove the learner "
        "from the class or program by hand.",
        "partial": "OpenLearning has no refund API: an alert records it; access normally stays.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """OpenLearning has no refund or unenrol API: the operator is alerted with what they need
        to remove the learner's access by hand (the user, the class or program, the amount)."""
        data = order.platform_data or {}
        user = data.get("user") or "unknown"
        if data.get("program"):
            target = f"program {data['program']}"
        else:
            target = f"class {data.get('class') or 'unknown'}"
        amount = format_money(amount_minor, order.currency, "en")
        full = order.state == OrderState.REFUNDED
        action = "remove their access by hand" if full else "partial refund: access normally stays"
        return Outcome(
            redirect_url=None,
            note=f"OpenLearning has no refund API: operator alerted ({amount})",
            detail={"user": user, "target": target, "amount_minor": amount_minor},
            alert=(
                f"refund of {amount} on OpenLearning: learner {user} in {target} "
                f"({'refunded in full' if full else 'refunded in part'}): {action}; OpenLearning "
                "has no refund API"
            ),
        )
