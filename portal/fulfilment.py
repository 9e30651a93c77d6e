"""Job kinds: telling the platform (fulfil, cancel, payment failed), the expiry sweep, and
reconciliation with Stripe. Listed with every other job kind in `portal.job_kinds`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from portal import mail, orders, receipts
from portal.alerts import alert
from portal.checkout import sync_session
from portal.db import db
from portal.http import UpstreamError
from portal.models import Order, OrderState, utcnow
from portal.orders import timeline

log = logging.getLogger("portal.fulfilment")


def _order(job) -> Order | None:
    return orders.by_id(job.order_id)


def run_fulfil(services, job) -> None:
    order = _order(job)
    if order is None or order.state != OrderState.PAID:
        return  # already fulfilled, refunded, or resolved by an operator
    platform = services.platform(order.platform)
    timeline.record(order.id, "job", f"fulfil attempt {job.attempts}")
    outcome = platform.fulfil(order, retry=job.attempts > 1)
    redirect = outcome.redirect_url
    if redirect and not services.allowed_redirect(redirect):
        log.warning(
            "platform redirect to a host not in PORTAL_REDIRECT_HOSTS: %s",
            redirect,
            extra={"order_id": order.id},
        )
        timeline.record(order.id, "alert", "platform redirect host not allowed", {"url": redirect})
        redirect = None
    with db.transaction() as session:
        values = {"fulfilled_at": utcnow(), "failure_reason": None}
        if redirect:
            values["redirect_url"] = redirect
        # Part of the payment went back before the platform confirmed (a refund in Stripe's
        # dashboard): the learner has the purchase, and the order says part was refunded.
        fulfilled = "fulfilled_after_refund" if order.amount_refunded_minor else "fulfilled"
        if orders.move(order, fulfilled, session=session, **values):
            timeline.record(
                order.id,
                "job",
                outcome.note or "platform confirmed",
                outcome.detail,
                session=session,
            )
            # The learner's receipt, when the portal is the one to send it (an authorisation
            # gets its receipt when it is captured).
            if (
                order.capture_method != "manual"
                and (order.amount_paid_minor or 0) > 0
                and receipts.portal_sends(services.settings, order)
            ):
                mail.queue(session, "receipt", order, to=order.customer_email)


def give_up_fulfil(services, job, error: str) -> None:
    order = _order(job)
    moved = orders.move(order, "fulfil_failed", failure_reason=error)
    if moved:
        alert(
            services,
            moved,
            f"paid but not fulfilled after {job.attempts} attempts: {error}",
        )


def run_cancel(services, job) -> None:
    order = _order(job)
    if order is None or order.state != OrderState.CANCELLED:
        return
    outcome = services.platform(order.platform).cancel(order)
    if outcome.redirect_url and services.allowed_redirect(outcome.redirect_url):
        orders.update(order, redirect_url=outcome.redirect_url)
    timeline.record(order.id, "job", outcome.note or "platform told: cancelled", outcome.detail)


def run_payment_failed(services, job) -> None:
    order = _order(job)
    if order is None or order.state != OrderState.PAYMENT_FAILED:
        return
    outcome = services.platform(order.platform).payment_failed(order, job.payload.get("reason", ""))
    with db.transaction() as session:
        timeline.record(
            order.id,
            "job",
            outcome.note or "platform told: payment failed",
            outcome.detail,
            session=session,
        )
        if receipts.portal_sends(services.settings, order):
            mail.queue(session, "payment_failed", order, to=order.customer_email)


def give_up_quietly(services, job, error: str) -> None:
    order = _order(job)
    if order is not None:
        alert(services, order, f"{job.kind} could not be reported to the platform: {error}")


SWEEP_BATCH = 200


def run_expire_sweep(services, job) -> None:
    """Orders whose Checkout Session should have expired by now: ask Stripe what happened.

    Every stale order is looked at, a page at a time; one session Stripe cannot answer for is
    logged and skipped, so it never holds back the others (they would otherwise wait forever
    behind the same first page)."""
    cutoff = utcnow() - timedelta(minutes=2)
    after_id = 0
    failures = 0
    while True:
        stale = orders.where(
            Order.state.in_([OrderState.PAYING, OrderState.PROCESSING]),
            Order.stripe_session_expires_at < cutoff,
            Order.stripe_session_id.is_not(None),
            Order.id > after_id,
            order_by=Order.id,
            limit=SWEEP_BATCH,
        )
        for order in stale:
            after_id = order.id
            try:
                stripe_session = services.stripe.retrieve_session(
                    order.stripe_session_id, order_id=order.id
                )
            except UpstreamError as exc:
                failures += 1
                log.warning("expiry sweep: %s", exc, extra={"order_id": order.id})
                continue
            sync_session(services, stripe_session, source="expiry sweep")
        if len(stale) < SWEEP_BATCH:
            break
    if failures:
        # The job retries on its next turn; the orders that could be checked were.
        raise UpstreamError(f"{failures} session(s) could not be checked", transient=True)


@dataclass
class ReconcileReport:
    since_hours: float
    sessions: int = 0
    ours: int = 0
    not_ours: int = 0
    paid: int = 0
    repaired: list[str] = field(default_factory=list)
    unfulfilled: list[str] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("window (hours)", f"{self.since_hours:g}"),
            ("Checkout Sessions seen", str(self.sessions)),
            ("  ours", str(self.ours)),
            ("  not ours", str(self.not_ours)),
            ("  paid", str(self.paid)),
            ("orders repaired", str(len(self.repaired))),
            ("paid, awaiting fulfilment", str(len(self.unfulfilled))),
        ]


def reconcile(services, since_hours: float = 48.0) -> ReconcileReport:
    """Compare Stripe's Checkout Sessions with our orders and repair what drifted."""
    report = ReconcileReport(since_hours=since_hours)
    since = int(time.time() - since_hours * 3600)
    for stripe_session in services.stripe.list_sessions(since):
        report.sessions += 1
        reference = stripe_session.get("client_reference_id")
        try:
            before = orders.get(reference) if reference else None
        except orders.NotFound:
            before = None
        if before is None:
            report.not_ours += 1
            continue
        report.ours += 1
        paid = stripe_session.get("status") == "complete" and stripe_session.get(
            "payment_status"
        ) in {"paid", "no_payment_required"}
        report.paid += int(paid)
        after = sync_session(services, stripe_session, source="reconciliation")
        if after is not None and after.state != before.state:
            report.repaired.append(f"{after.reference}: {before.state} -> {after.state}")
            timeline.record(after.id, "note", f"reconciliation: {before.state} -> {after.state}")
        if (
            after is not None
            and after.state == OrderState.PAID
            and after.reference not in report.unfulfilled
        ):
            report.unfulfilled.append(after.reference)
    return report


def run_reconcile(services, job) -> None:
    report = reconcile(services, job.payload.get("since_hours", 48.0))
    log.info("reconciliation: %s", dict(report.rows()))
