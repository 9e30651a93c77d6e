"""The order state machine, declared once: each event, the states it may start from, and the
state it leads to. `portal.orders.move(order, event, ...)` is the only way an order changes state,
and its compare-and-set takes the allowed start states from `MOVES`, so no caller lists them.

The derived sets below (paid, the learner's current order, refundable) sit beside the table so
that a new state or move is added in one place. `docs/architecture.md` draws this table as a
diagram; `tests/test_order_states.py` checks the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from portal.models import PAID_STATES, OrderState

OPEN = OrderState.OPEN
PAYING = OrderState.PAYING
PROCESSING = OrderState.PROCESSING
PAID = OrderState.PAID
FULFILLED = OrderState.FULFILLED
CANCELLED = OrderState.CANCELLED
EXPIRED = OrderState.EXPIRED
PAYMENT_FAILED = OrderState.PAYMENT_FAILED
FULFIL_FAILED = OrderState.FULFIL_FAILED
REFUNDED = OrderState.REFUNDED
PARTIALLY_REFUNDED = OrderState.PARTIALLY_REFUNDED

# A refund is possible once the money is in (even before the platform confirmed: refunding a paid,
# unfulfilled order in full stops its fulfilment).
REFUNDABLE = (PAID, FULFILLED, FULFIL_FAILED, PARTIALLY_REFUNDED)
# A partial refund leaves the learner enrolled: only for an order the platform has confirmed.
# (A paid order still waiting for the platform would never be fulfilled once it left `paid`.)
PARTIALLY_REFUNDABLE = (FULFILLED, PARTIALLY_REFUNDED)


@dataclass(frozen=True)
class Move:
    """An event's allowed start states (`sources`, in the order the timeline lists them) and
    the state it leads to."""

    sources: tuple[OrderState, ...]
    to: OrderState
    why: str


MOVES: dict[str, Move] = {
    # the learner's checkout
    "pay": Move((OPEN,), PAYING, "a Stripe Checkout Session was created for it"),
    "reopen": Move((EXPIRED,), OPEN, "Pay again after the last session expired"),
    "nothing_to_pay": Move((OPEN,), PAID, "a total of zero (a 100% promo): no Stripe session"),
    "complete_unpaid": Move(
        (OPEN, PAYING), PROCESSING, "checkout completed, payment not settled (delayed methods)"
    ),
    "session_expired": Move((PAYING,), EXPIRED, "the Checkout Session it waited on expired"),
    "paid": Move(
        (OPEN, PAYING, PROCESSING, EXPIRED, CANCELLED, PAYMENT_FAILED),
        PAID,
        "Stripe says the money is in (also late: after a cancel or an expiry)",
    ),
    "payment_failed": Move((PROCESSING, PAYING), PAYMENT_FAILED, "a delayed payment method failed"),
    "cancel": Move((OPEN, PAYING, EXPIRED), CANCELLED, "the learner, an operator or an expiry"),
    # after the money
    "fulfilled": Move((PAID,), FULFILLED, "the platform confirmed"),
    "fulfilled_after_refund": Move(
        (PAID,), PARTIALLY_REFUNDED, "the platform confirmed; part was refunded meanwhile"
    ),
    "fulfil_failed": Move((PAID,), FULFIL_FAILED, "fulfilment attempts used up (an alert)"),
    "retry": Move((FULFIL_FAILED,), PAID, "an operator asks for fulfilment again"),
    "resolve": Move((FULFIL_FAILED,), FULFILLED, "an operator marks it resolved"),
    "void": Move((PAID, FULFILLED), CANCELLED, "an uncaptured authorisation was voided"),
    "refund_partly": Move(
        (*REFUNDABLE, REFUNDED), PARTIALLY_REFUNDED, "part of the payment went back"
    ),
    "refund_fully": Move((*REFUNDABLE, REFUNDED), REFUNDED, "all of the payment went back"),
}

# The states in which an order answers for its learner and purchase: a new attempt shows it
# (to pay it, or to see that it is paid) instead of opening another. Cancelled, failed and
# refunded orders are over: a new attempt is a new purchase.
LEARNER_ORDER_STATES = (OPEN, PAYING, EXPIRED, PROCESSING, PAID, FULFILLED, FULFIL_FAILED)

__all__ = [
    "LEARNER_ORDER_STATES",
    "MOVES",
    "PAID_STATES",
    "PARTIALLY_REFUNDABLE",
    "REFUNDABLE",
    "Move",
    "OrderState",
    "next_state",
]


def next_state(state: str, event: str) -> OrderState | None:
    """Where `event` takes an order in `state`, or None when the table does not allow it."""
    move = MOVES[event]
    return move.to if state in move.sources else None
