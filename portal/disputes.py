"""The one dispute service: `charge.dispute.created` and `charge.dispute.closed` from Stripe.

Each dispute is one `disputes` row keyed by its Stripe id. Opening one flags the order, alerts the
operators (`dispute_opened`) and queues the `platform_dispute` job; closing it records the outcome
(won: Stripe's `won` or `warning_closed`, where no money moved; lost: `lost`), queues the job
again, and a lost dispute is recorded as a full refund of what is left (through the refund
service, so every platform hears of it as it hears of any refund) and alerts (`dispute_lost`).
Events that arrive twice, or closed before created, change nothing the second time.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import alerts, jobs, orders, refunds
from portal.db import db
from portal.models import Dispute, Order, utcnow
from portal.orders import timeline

WON = frozenset({"won", "warning_closed", "prevented"})


def _view(row: Dispute) -> dict:
    return {
        "id": row.stripe_id,
        "amount_minor": row.amount_minor,
        "currency": row.currency,
        "reason": row.reason,
        "status": row.status,
        "outcome": row.outcome,
    }


def _row(session, order: Order, obj: dict) -> tuple[Dispute, bool]:
    row = session.scalar(select(Dispute).where(Dispute.stripe_id == obj["id"]))
    if row is not None:
        return row, False
    row = Dispute(
        stripe_id=str(obj["id"]),
        order_id=order.id,
        amount_minor=int(obj.get("amount") or 0),
        currency=str(obj.get("currency") or order.currency).upper(),
        reason=(str(obj["reason"])[:64] if obj.get("reason") else None),
        status=str(obj.get("status") or "needs_response")[:32],
    )
    session.add(row)
    session.flush()
    return row, True


def _lock(session, order_id: int) -> Order:
    return orders.lock(session, order_id)


def _queue(session, order: Order, row: Dispute, stage: str) -> None:
    jobs.enqueue(
        session,
        "platform_dispute",
        f"platform_dispute:{row.stripe_id}:{stage}",
        order_id=order.id,
        payload={"dispute": row.stripe_id, "stage": stage},
    )


def _once(apply):
    """Run `apply`; if a concurrent recording of the same dispute committed first (SQLite has no
    row lock to wait on), run it again: it then finds the dispute recorded."""
    try:
        return apply()
    except IntegrityError:
        return apply()


def opened(order: Order, obj: dict, event_id: str) -> str:
    return _once(lambda: _opened(order, obj, event_id))


def closed(order: Order, obj: dict, event_id: str) -> str:
    return _once(lambda: _closed(order, obj, event_id))


def _opened(order: Order, obj: dict, event_id: str) -> str:
    with db.transaction() as session:
        order = _lock(session, order.id)
        row, new = _row(session, order, obj)
        if not new:
            return "dispute already recorded"
        orders.update(order, session=session, disputed=True)
        amount = refunds.money(order, row.amount_minor)
        alerts.raise_alert(
            session,
            order,
            "dispute_opened",
            f"dispute opened for {amount} ({row.reason or 'no reason given'}); respond in "
            "Stripe's dashboard before the deadline",
            key=row.stripe_id,
            detail={
                "event": event_id,
                "dispute": row.stripe_id,
                "reason": row.reason,
                "amount": row.amount_minor,
                "currency": row.currency,
            },
        )
        _queue(session, order, row, "opened")
    return "dispute recorded"


def _closed(order: Order, obj: dict, event_id: str) -> str:
    status = str(obj.get("status") or "")
    outcome = "won" if status in WON else "lost" if status == "lost" else None
    if outcome is None:
        return f"dispute status {status!r} is not an outcome: nothing to do"
    with db.transaction() as session:
        order = _lock(session, order.id)
        row, _new = _row(session, order, obj)
        if row.outcome is not None:
            return f"dispute already closed ({row.outcome})"
        row.status = status[:32]
        row.outcome = outcome
        row.closed_at = utcnow()
        orders.update(order, session=session, disputed=False)
        timeline.record(
            order.id,
            "payment",
            f"dispute {row.stripe_id} closed: {outcome}",
            {"event": event_id, "dispute": row.stripe_id, "status": status},
            session=session,
        )
        if outcome == "lost":
            left = refunds.remaining_minor(order)
            if left > 0:
                # The card holder has the money back: a full refund in every platform's terms.
                refunds.record_in(
                    session,
                    order.id,
                    {"id": row.stripe_id, "amount": left, "status": "lost"},
                    source="dispute",
                    reason=f"dispute lost ({row.reason or 'no reason given'})",
                )
            alerts.raise_alert(
                session,
                order,
                "dispute_lost",
                f"dispute lost: {refunds.money(order, row.amount_minor)} went back to the card "
                "holder; the order counts as refunded in full",
                key=row.stripe_id,
                detail={"event": event_id, "dispute": row.stripe_id, "amount": row.amount_minor},
            )
        _queue(session, order, row, "closed")
    return f"dispute {outcome}"


def for_order(order_id: int) -> list[Dispute]:
    with db.reader() as session:
        return list(
            session.scalars(
                select(Dispute).where(Dispute.order_id == order_id).order_by(Dispute.id)
            )
        )


def run_platform_dispute(services, job) -> None:
    order = orders.by_id(job.order_id)
    with db.reader() as session:
        row = session.scalar(select(Dispute).where(Dispute.stripe_id == job.payload["dispute"]))
    if order is None or row is None:
        return
    if job.payload["stage"] == "opened" and row.outcome is not None:
        timeline.record(order.id, "job", "dispute already closed: its opening is not reported")
        return
    outcome = services.platform(order.platform).dispute(order, _view(row))
    timeline.record(order.id, "job", outcome.note or "platform told: dispute", outcome.detail)


def give_up_platform_dispute(services, job, error: str) -> None:
    order = orders.by_id(job.order_id)
    if order is None:
        return
    # The operator already has the dispute's own alert; this one says the platform is behind.
    from portal.alerts import alert

    alert(
        services, order, f"the platform was not told of dispute {job.payload['dispute']}: {error}"
    )
