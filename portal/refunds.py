"""The one refund service, whoever asks for the refund: the operator console, the merchant API,
Stripe's dashboard (seen through `charge.refunded`), a platform (Cleeng asks for refunds), or a
lost dispute (which counts as a full refund).

Every refund is one `refunds` row keyed by its Stripe id. Recording it is one transaction under
the order's row lock: the row, the order's refunded total and state (compare-and-set), a timeline
event, and the `platform_refund` job that tells the platform. Recording the same refund again (a
console refund's own `charge.refunded`, a replayed webhook, a retried request) changes nothing and
queues nothing, so each refund reaches its platform exactly once. The job is retried like
fulfilment; a platform that cannot take the refund (an outage that outlasts the retries, or a
platform with no refund API) raises a `refund_not_taken` alert.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import alerts, jobs, mail, orders, receipts
from portal.db import db
from portal.http import UpstreamError
from portal.models import Order, OrderState, Refund, utcnow
from portal.money import format_money
from portal.orders import states, timeline

log = logging.getLogger("portal.refunds")

# Which states a refund (in full, or in part) may start from: beside the state machine.
REFUNDABLE = states.REFUNDABLE
PARTIALLY_REFUNDABLE = states.PARTIALLY_REFUNDABLE
# Metadata a refund carries when the platform asked for it and is told by its own job.
PLATFORM_TOLD = "portal_platform_told"
# Metadata a refund asked for with a client's idempotency key carries: the key, so a retry that
# finds nothing left to refund can find the refund its first try made.
REQUEST_KEY = "portal_request"


class RefundRefused(Exception):
    """This refund cannot be made; `code` for the API, the message for people."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Recorded:
    refund_id: str
    amount_minor: int
    total_minor: int  # refunded on the order in all, after this refund
    state: str
    new: bool  # False: this refund was recorded before (nothing was queued this time)
    job_key: str | None  # the platform_refund job, when the platform is told


def refundable_minor(order: Order) -> int:
    """What was taken and can be given back: a manual capture takes what was captured."""
    if order.capture_method == "manual":
        return order.amount_captured_minor or 0
    return order.amount_paid_minor or 0


def remaining_minor(order: Order) -> int:
    return max(refundable_minor(order) - (order.amount_refunded_minor or 0), 0)


def is_partial(order: Order, amount_minor: int) -> bool:
    """Would this refund leave part of the payment with the merchant?"""
    return amount_minor < remaining_minor(order)


def money(order: Order, amount_minor: int) -> str:
    return format_money(amount_minor, order.currency, "en")


def check(order: Order, amount_minor: int) -> None:
    """Raise RefundRefused unless `amount_minor` can be refunded on the order now."""
    if order.state not in REFUNDABLE or not order.stripe_payment_intent_id:
        raise RefundRefused(
            "order_not_refundable",
            f"This order cannot be refunded: it is {order.state}"
            + ("" if order.stripe_payment_intent_id else " and has no Stripe payment")
            + ".",
        )
    if refundable_minor(order) <= 0:
        raise RefundRefused(
            "order_not_refundable",
            "Nothing was captured on this order: there is nothing to refund.",
        )
    remaining = remaining_minor(order)
    if remaining <= 0:
        raise RefundRefused("nothing_left", "Nothing is left to refund on this order.")
    if not 0 < amount_minor <= remaining:
        raise RefundRefused(
            "amount_too_large" if amount_minor > remaining else "amount_invalid",
            f"The amount must be more than zero and at most {money(order, remaining)}, what is "
            "left of the payment.",
        )
    if amount_minor < remaining and order.state not in PARTIALLY_REFUNDABLE:
        raise RefundRefused(
            "partial_refund_not_allowed",
            "A partial refund needs a fulfilled order: this one is "
            f"{order.state}. Refund it in full, or fulfil it first.",
        )


def refund(
    services,
    order: Order,
    amount_minor: int,
    *,
    idempotency_key: str,
    source: str,
    reason: str | None = None,
    metadata: dict | None = None,
    also=None,
    client_key: bool = False,
) -> tuple[dict, Recorded]:
    """Check, refund through Stripe (outside any transaction), then record. `also(session,
    recorded)` runs in the recording transaction (the console's audit entry); `client_key`: the
    idempotency key is the client's own (the merchant API's Idempotency-Key). Raises
    RefundRefused, or portal.http.UpstreamError when Stripe did not refund.

    A retry of a request whose answer was lost (same `idempotency_key`) is the same refund: while
    something is left to refund, Stripe replays its first answer; once the refund itself used up
    what was left (its `charge.refunded` recorded it between the two tries), the refund is found
    at Stripe by the key it carries, and answered again, never refused nor counted twice."""
    key = idempotency_key[:255]
    try:
        check(order, amount_minor)
    except RefundRefused:
        made = None
        if client_key and order.stripe_payment_intent_id:
            made = _made_with_key(services, order, key)
        if made is None:
            raise
        stripe_refund = made
    else:
        stripe_refund = services.stripe.refund(
            order.stripe_payment_intent_id,
            amount_minor,
            key,
            order_id=order.id,
            metadata={
                "order_reference": order.reference,
                **(metadata or {}),
                **({REQUEST_KEY: key} if client_key else {}),
            },
        )
    # Stripe's answer says what was refunded (a replayed request: the first refund's amount).
    answer = {"amount": amount_minor, **{k: v for k, v in stripe_refund.items() if v is not None}}
    recorded = record(order.id, answer, source=source, reason=reason, also=also)
    return stripe_refund, recorded


def _made_with_key(services, order: Order, key: str) -> dict | None:
    """The refund an earlier try of this request made at Stripe, when it is recorded on the order
    (a refund the portal has not recorded is not taken as done: the request is refused)."""
    recorded = {r.stripe_id for r in for_order(order.id)}
    if not recorded:
        return None
    for made in services.stripe.list_refunds(order.stripe_payment_intent_id, order_id=order.id):
        if (made.get("metadata") or {}).get(REQUEST_KEY) == key and made.get("id") in recorded:
            return made
    return None


def record(
    order_id: int,
    stripe_refund: dict,
    *,
    source: str,
    reason: str | None = None,
    charged: int | None = None,
    also=None,
) -> Recorded:
    """Record one refund (a Stripe Refund object, or a lost dispute's stand-in) exactly once."""
    for attempt in (1, 2):
        try:
            with db.transaction() as session:
                recorded = record_in(
                    session, order_id, stripe_refund, source=source, reason=reason, charged=charged
                )
                if also is not None:
                    also(session, recorded)
            return recorded
        except IntegrityError:
            # A concurrent recording of the same refund committed first (SQLite has no row lock
            # to wait on): look again, and find it recorded.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def record_in(
    session,
    order_id: int,
    stripe_refund: dict,
    *,
    source: str,
    reason: str | None = None,
    charged: int | None = None,
) -> Recorded:
    """`record` inside the caller's transaction."""
    refund_id = str(stripe_refund["id"])
    amount = int(stripe_refund.get("amount") or 0)
    order = orders.lock(session, order_id)
    already = (order.amount_refunded_minor or 0) if order is not None else 0
    existing = session.scalar(select(Refund).where(Refund.stripe_id == refund_id))
    if existing is not None or order is None:
        return Recorded(refund_id, amount, already, order.state if order else "", False, None)
    cap = refundable_minor(order)
    if charged is not None:
        cap = min(cap, charged) if cap else charged
    total = already + amount
    if cap:
        total = min(total, cap)
    new_state = OrderState.REFUNDED if cap and total >= cap else OrderState.PARTIALLY_REFUNDED
    session.add(
        Refund(
            stripe_id=refund_id,
            order_id=order.id,
            amount_minor=amount,
            currency=order.currency,
            status=str(stripe_refund.get("status") or "succeeded"),
            source=source,
            reason=reason or stripe_refund.get("reason"),
            created_at=_created(stripe_refund),
        )
    )
    # A partial refund (made in Stripe's dashboard: the console and the API refuse it) of an
    # order still waiting for its platform leaves the order to be fulfilled: the learner paid
    # and keeps what they bought; the refund is reported once the platform has confirmed.
    keeps_state = new_state == OrderState.PARTIALLY_REFUNDED and order.state in (
        OrderState.PAID,
        OrderState.FULFIL_FAILED,
    )
    event = "refund_fully" if new_state == OrderState.REFUNDED else "refund_partly"
    if keeps_state or not orders.move(order, event, session=session, amount_refunded_minor=total):
        # Not a paid order (a refund on an order the portal never saw paid): keep the money's
        # record, leave the state alone.
        orders.update(order, session=session, amount_refunded_minor=total)
        new_state = order.state
    timeline.record(
        order.id,
        "payment",
        f"refund of {money(order, amount)} recorded ({source}): "
        f"{money(order, total)} refunded in all",
        {"refund": refund_id, "amount": amount, "refunded_total": total, "source": source},
        session=session,
    )
    job_key = None
    if (stripe_refund.get("metadata") or {}).get(PLATFORM_TOLD):
        timeline.record(
            order.id,
            "note",
            "the platform asked for this refund: it is not told again",
            session=session,
        )
    else:
        job_key = f"platform_refund:{refund_id}"
        jobs.enqueue(
            session,
            "platform_refund",
            job_key,
            order_id=order.id,
            payload={
                "amount_minor": amount,
                "refund": refund_id,
                "refunded_at": _created(stripe_refund).isoformat(),
                "source": source,
                "reason": reason or stripe_refund.get("reason"),
            },
        )
    return Recorded(refund_id, amount, total, str(new_state), True, job_key)


def _created(stripe_refund: dict) -> datetime:
    created = stripe_refund.get("created")
    if isinstance(created, int | float) and created > 0:
        return datetime.fromtimestamp(created, UTC)
    return utcnow()


def for_order(order_id: int) -> list[Refund]:
    with db.reader() as session:
        return list(
            session.scalars(select(Refund).where(Refund.order_id == order_id).order_by(Refund.id))
        )


# --- telling the platform (a job) -----------------------------------------------------------------


def _order(job) -> Order | None:
    return orders.by_id(job.order_id)


def run_platform_refund(services, job) -> None:
    order = _order(job)
    if order is None or not order.is_paid:
        return
    if order.state == OrderState.PAID:
        # Partly refunded before the platform confirmed the purchase: report after it has.
        raise UpstreamError("the order is not fulfilled yet: the refund waits", transient=True)
    refunded_at = datetime.fromisoformat(job.payload["refunded_at"])
    amount = int(job.payload["amount_minor"])
    outcome = services.platform(order.platform).refund(
        order,
        amount,
        refunded_at=refunded_at,
        refund={
            "id": job.payload.get("refund"),
            "reason": job.payload.get("reason"),
            "source": job.payload.get("source"),
        },
    )
    with db.transaction() as session:
        timeline.record(
            order.id,
            "job",
            outcome.note or "platform told: refunded",
            outcome.detail,
            session=session,
        )
        if receipts.portal_sends(services.settings, order):
            mail.queue(
                session,
                "refund_issued",
                order,
                to=order.customer_email,
                key=str(job.payload.get("refund") or job.id),
                notice={
                    "amount_minor": amount,
                    "refunded_minor": order.amount_refunded_minor or 0,
                    "full": order.state == OrderState.REFUNDED,
                },
            )
        if outcome.alert:
            # The platform has no way to take it: an operator must (remove access by hand).
            alerts.raise_alert(
                session,
                order,
                "refund_not_taken",
                outcome.alert,
                key=str(job.payload.get("refund") or job.id),
                detail={**outcome.detail, "amount": amount, "currency": order.currency},
            )


def give_up_platform_refund(services, job, error: str) -> None:
    order = _order(job)
    if order is None:
        return
    platform = services.platform(order.platform)
    amount = int(job.payload.get("amount_minor") or 0)
    with db.transaction() as session:
        alerts.raise_alert(
            session,
            order,
            "refund_not_taken",
            f"{platform.label or order.platform} was not told of the refund of "
            f"{money(order, amount)} ({job.payload.get('refund')}): {error}",
            key=str(job.payload.get("refund") or job.id),
            detail={"refund": job.payload.get("refund"), "amount": amount, "error": error},
        )


def alert_raised(order_id: int, refund_id: str) -> bool:
    """Whether the platform could not take this refund and an operator was alerted."""
    return jobs.job_state(f"alert:refund_not_taken:{refund_id}"[:190]) is not None
