"""What every step of the checkout shares: the error a learner is shown, and where a view sends
the learner next."""

from __future__ import annotations

from dataclasses import dataclass

from portal.i18n import N_
from portal.models import Order


class CheckoutError(Exception):
    """A problem the learner must be told about; views render it as a branded page."""

    def __init__(self, status: int, title: str, message: str, *, back_url: str | None = None):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.back_url = back_url


def order_not_found() -> CheckoutError:
    return CheckoutError(404, N_("Order not found"), N_("We could not find this order."))


@dataclass
class Next:
    """Where a view sends the learner: an external URL, or one of our pages."""

    redirect_url: str | None = None
    page: str | None = None  # "status" | "review" | "cancelled"
    order: Order | None = None
