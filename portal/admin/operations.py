"""Console writes: the operator actions on orders (retry fulfilment, refund, cancel, resolve),
sending a merchant webhook delivery again, and user management. Every action is checked against
the order's state, changes it with a compare-and-set, writes an "operator" event to the order's
timeline and an audit entry, and never calls out while a database transaction is open. Nothing
here reads `request`: the views pass an `Actor`.

Refunds go through the one refund service (`portal.refunds`), shared with the merchant API and
Stripe's `charge.refunded`; its `platform_refund` job tells the platform, retried from the queue.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal import checkout, jobs, orders, refunds
from portal.admin import audit
from portal.admin.audit import Actor
from portal.admin.auth import hash_password, normalise_email, password_problem
from portal.api import webhooks_out
from portal.checkout import CheckoutError
from portal.db import db
from portal.http import UpstreamError, redact_url
from portal.models import JobState, Order, OrderState, Role, User, WebhookEndpoint, utcnow
from portal.money import format_money
from portal.orders import timeline
from portal.platforms import Platform

log = logging.getLogger("portal.admin")

# A paid order's fulfilment can be run again now; a fulfil_failed one goes back to paid first.
RETRYABLE = (OrderState.PAID, *orders.states.MOVES["retry"].sources)
CANCELLABLE = orders.states.MOVES["cancel"].sources


class ActionRefused(Exception):
    """The action cannot be done to this order now; the message says why, for the operator."""


@dataclass
class ActionResult:
    message: str
    ok: bool = True


def _order(reference: str) -> Order:
    try:
        return orders.get(reference)
    except orders.NotFound:
        raise ActionRefused("There is no such order.") from None


def _money(order: Order, amount_minor: int) -> str:
    return format_money(amount_minor, order.currency, "en")


def _note(session, order: Order, actor: Actor, action: str, message: str, **detail) -> None:
    """The order's timeline entry for an operator action."""
    timeline.record(
        order.id,
        "operator",
        f"{message} (by {actor.email})",
        {"action": action, "actor": actor.email, **detail},
        session=session,
    )


def _refuse(actor: Actor, action: str, order: Order | None, message: str, **detail):
    audit.record(
        actor,
        action,
        "refused",
        target=order.reference if order else None,
        order_id=order.id if order else None,
        detail={"reason": message, **detail},
    )
    raise ActionRefused(message)


def offers(order: Order) -> dict[str, bool]:
    """Which actions make sense for the order as it is now (the order page shows these)."""
    refundable = (
        order.state in refunds.REFUNDABLE
        and bool(order.stripe_payment_intent_id)
        and refunds.remaining_minor(order) > 0
    )
    return {
        "retry": order.state in RETRYABLE,
        "refund": refundable,
        "cancel": order.state in CANCELLABLE,
        "resolve": order.state == OrderState.FULFIL_FAILED,
    }


# --- retry fulfilment now ----------------------------------------------------------------------


def retry_fulfilment(services, actor: Actor, reference: str) -> ActionResult:
    """Make the order's fulfil job due now (a `fulfil_failed` order goes back to `paid` first and
    its job gets a fresh set of attempts), then run it, waiting a few seconds for the platform."""
    action = "orders.retry"
    order = _order(reference)
    if order.state not in RETRYABLE:
        _refuse(
            actor,
            action,
            order,
            f"Only a paid, unfulfilled order can be retried: this one is {order.state}.",
        )
    key = f"fulfil:{order.id}"
    with db.transaction() as session:
        if order.state == OrderState.FULFIL_FAILED and not orders.move(
            order, "retry", session=session, failure_reason=None
        ):
            raise ActionRefused("The order changed meanwhile: reload the page and look again.")
        jobs.enqueue(session, "fulfil", key, order_id=order.id)
        # A job a worker holds right now is left alone: we wait for its outcome below.
        jobs.requeue(session, key, keep_queued_attempts=True)
        _note(session, order, actor, "retry", "fulfilment retry requested", from_state=order.state)
        audit.record(
            actor,
            action,
            target=order.reference,
            order_id=order.id,
            detail={"from_state": str(order.state)},
            session=session,
        )
    jobs.run_inline(services, key, services.settings.inline_fulfil_seconds)
    after = orders.refresh(order)
    if after.state == OrderState.FULFILLED:
        return ActionResult(f"The platform confirmed order {order.reference}: it is fulfilled.")
    job = jobs.job_state(key)
    error = job.last_error if job is not None and job.last_error else "no answer yet"
    if after.state == OrderState.FULFIL_FAILED:
        return ActionResult(
            f"Fulfilment failed again ({error}); the order is back in fulfil_failed.", ok=False
        )
    return ActionResult(
        f"Fulfilment was retried but is not confirmed yet ({error}). The order is "
        f"{after.state}; the job queue keeps trying.",
        ok=False,
    )


# --- refund ------------------------------------------------------------------------------------


def refund(
    services,
    actor: Actor,
    reference: str,
    amount_minor: int,
    reason: str,
    *,
    expected_refunded: int | None = None,
) -> ActionResult:
    """Refund through the refund service (Stripe, the order, the platform job), as an operator.

    `expected_refunded` is what the operator saw refunded already: if it has changed, the refund
    is refused (someone else refunded, or this is a repeated submit). Two submits that race each
    other send the same idempotency key, and Stripe makes them one refund.
    """
    action = "orders.refund"
    order = _order(reference)
    already = order.amount_refunded_minor or 0
    detail = {"amount_minor": amount_minor, "reason": reason}
    if expected_refunded is not None and expected_refunded != already:
        _refuse(
            actor,
            action,
            order,
            f"The order changed since you opened the refund page: {_money(order, already)} is "
            "refunded now. Check the order and refund again if you still need to.",
            **detail,
        )
    try:
        refunds.check(order, amount_minor)
    except refunds.RefundRefused as exc:
        _refuse(actor, action, order, exc.message, **detail)

    def note(session, recorded: refunds.Recorded) -> None:
        refund_detail = {
            **detail,
            "refund": recorded.refund_id,
            "refunded_total": recorded.total_minor,
        }
        _note(
            session,
            order,
            actor,
            "refund",
            f"refunded {_money(order, amount_minor)} through Stripe: {reason}",
            **refund_detail,
        )
        audit.record(
            actor,
            action,
            target=order.reference,
            order_id=order.id,
            detail=refund_detail,
            session=session,
        )

    # Same order, same refunded-so-far, same amount: the same refund (a double click, two
    # operators doing the same thing). Stripe answers the second request with the first refund.
    try:
        stripe_refund, recorded = refunds.refund(
            services,
            order,
            amount_minor,
            idempotency_key=f"{order.reference}-refund-{already}-{amount_minor}",
            source="console",
            reason=reason,
            also=note,
        )
    except refunds.RefundRefused as exc:
        _refuse(actor, action, order, exc.message, **detail)
    except UpstreamError as exc:
        audit.record(
            actor,
            action,
            "failed",
            target=order.reference,
            order_id=order.id,
            detail={**detail, "error": str(exc)},
        )
        timeline.record(
            order.id,
            "operator",
            f"refund of {_money(order, amount_minor)} failed: {exc} (by {actor.email})",
            {"action": "refund", "actor": actor.email, "error": str(exc), **detail},
        )
        raise ActionRefused(f"Stripe did not refund: {exc}") from exc
    key = f"platform_refund:{recorded.refund_id}"
    jobs.run_inline(services, key, services.settings.inline_fulfil_seconds)
    job = jobs.job_state(key)
    platform = services.platform(order.platform)
    label = platform.label or order.platform
    message = f"Refunded {_money(order, amount_minor)} (Stripe refund {stripe_refund.get('id')})."
    if type(platform).refund is Platform.refund:
        return ActionResult(f"{message} {label} has no refund to be told about.")
    if job is not None and job.state == JobState.DONE:
        after = orders.refresh(order)
        if refunds.alert_raised(after.id, recorded.refund_id):
            return ActionResult(
                f"{message} {label} cannot take refunds: an operator must remove the "
                "learner's access by hand (see the alert on this order).",
                ok=False,
            )
        return ActionResult(f"{message} {label} was told.")
    error = job.last_error if job is not None and job.last_error else "no answer yet"
    return ActionResult(
        f"{message} {label} has not confirmed yet ({error}); the job queue keeps trying.",
        ok=False,
    )


# --- cancel ------------------------------------------------------------------------------------


def cancel(services, actor: Actor, reference: str, reason: str) -> ActionResult:
    """Cancel an unpaid order the way a learner's "return without paying" does: the Stripe session
    is expired first (so it can no longer be paid), then the platform is told."""
    action = "orders.cancel"
    order = _order(reference)
    if order.state not in CANCELLABLE:
        _refuse(
            actor,
            action,
            order,
            f"Only an unpaid order can be cancelled: this one is {order.state}.",
            reason=reason,
        )
    try:
        checkout.cancel_order(services, reference)
    except (CheckoutError, UpstreamError) as exc:
        message = exc.message if isinstance(exc, CheckoutError) else str(exc)
        audit.record(
            actor,
            action,
            "failed",
            target=order.reference,
            order_id=order.id,
            detail={"reason": reason, "error": message},
        )
        raise ActionRefused(f"The order could not be cancelled: {message}") from exc
    after = orders.refresh(order)
    ok = after.state == OrderState.CANCELLED
    with db.transaction() as session:
        if ok:
            _note(session, order, actor, "cancel", f"order cancelled: {reason}", reason=reason)
        else:
            _note(
                session,
                order,
                actor,
                "cancel",
                f"cancel requested, but the order is {after.state}",
                reason=reason,
            )
        audit.record(
            actor,
            action,
            "ok" if ok else "refused",
            target=order.reference,
            order_id=order.id,
            detail={"reason": reason, "state": str(after.state)},
            session=session,
        )
    if ok:
        return ActionResult(f"Order {order.reference} is cancelled and the platform was told.")
    return ActionResult(
        f"The order was not cancelled: it is {after.state} (it may have been paid meanwhile).",
        ok=False,
    )


# --- resolve -----------------------------------------------------------------------------------


def resolve(services, actor: Actor, reference: str, reason: str) -> ActionResult:
    """An operator finished a failed fulfilment by hand (enrolled the learner on the platform):
    `fulfil_failed` -> `fulfilled`, with the reason on the timeline."""
    action = "orders.resolve"
    order = _order(reference)
    if order.state != OrderState.FULFIL_FAILED:
        _refuse(
            actor,
            action,
            order,
            f"Only a fulfil_failed order can be marked resolved: this one is {order.state}.",
            reason=reason,
        )
    with db.transaction() as session:
        moved = orders.move(order, "resolve", session=session, fulfilled_at=utcnow())
        if moved:
            _note(session, order, actor, "resolve", f"marked resolved: {reason}", reason=reason)
            audit.record(
                actor,
                action,
                target=order.reference,
                order_id=order.id,
                detail={"reason": reason},
                session=session,
            )
    if not moved:
        _refuse(actor, action, order, "The order changed meanwhile: reload and look again.")
    return ActionResult(f"Order {order.reference} is marked fulfilled.")


# --- merchant webhook deliveries ----------------------------------------------------------------


def resend_webhook(actor: Actor, delivery_id: int) -> ActionResult:
    """Send a merchant webhook delivery again through the job queue: the same body and event id
    (the receiver can drop a copy it already has), a fresh set of attempts, due now. The worker
    sends it; the delivery log shows how it went."""
    action = "webhooks.resend"
    try:
        with db.transaction() as session:
            before = webhooks_out.requeue_delivery(session, delivery_id)
            order = session.get(Order, before.order_id) if before.order_id else None
            url = redact_url(
                session.scalar(
                    select(WebhookEndpoint.url).where(WebhookEndpoint.id == before.endpoint_id)
                )
            )
            detail = {
                "delivery": before.id,
                "event": before.event_id,
                "event_type": before.event_type,
                "endpoint": url,
                "from_state": before.state,
                "attempts": before.attempts,
                "last_status": before.last_status,
            }
            if order is not None:
                _note(
                    session,
                    order,
                    actor,
                    "resend_webhook",
                    f"merchant event {before.event_type} queued again for {url}",
                    **detail,
                )
            audit.record(
                actor,
                action,
                target=order.reference if order is not None else before.event_id,
                order_id=order.id if order is not None else None,
                detail=detail,
                session=session,
            )
    except webhooks_out.RedeliveryRefused as exc:
        audit.record(
            actor,
            action,
            "refused",
            target=f"delivery {delivery_id}",
            detail={"delivery": delivery_id, "reason": str(exc)},
        )
        raise ActionRefused(str(exc)) from exc
    return ActionResult(
        f"Event {before.event_type} ({before.event_id}) is queued to be sent to {url} again, "
        "with the same event id. The worker sends it within moments; this page shows the outcome."
    )


# --- users -------------------------------------------------------------------------------------


class UserError(Exception):
    pass


def create_user(actor: Actor, email: str, role: str, password: str | None) -> User:
    email = normalise_email(email)
    if "@" not in email or len(email) > 320:
        raise UserError("That is not an email address.")
    if role not in set(Role):
        raise UserError(f"The role must be one of {', '.join(Role)}.")
    if password is not None:
        problem = password_problem(password)
        if problem:
            raise UserError(problem)
    password_hash = hash_password(password) if password is not None else None
    try:
        with db.transaction() as session:
            user = User(email=email, role=role, password_hash=password_hash, active=True)
            session.add(user)
            session.flush()
            audit.record(
                actor, "users.create", target=email, detail={"role": role}, session=session
            )
    except IntegrityError:
        raise UserError(f"There is already a user {email}.") from None
    return user


def _active_admins(session) -> int:
    return len(
        session.scalars(select(User.id).where(User.role == Role.ADMIN, User.active.is_(True))).all()
    )


def update_user(
    actor: Actor,
    user_id: int,
    *,
    role: str | None = None,
    active: bool | None = None,
    password: str | None = None,
) -> User:
    """Change a user's role, access or password. The last active admin cannot be demoted or
    deactivated (nobody could manage users any more). A new password or deactivation ends the
    user's sessions."""
    if role is not None and role not in set(Role):
        raise UserError(f"The role must be one of {', '.join(Role)}.")
    if password:
        problem = password_problem(password)
        if problem:
            raise UserError(problem)
    password_hash = hash_password(password) if password else None
    with db.transaction() as session:
        user = session.get(User, user_id)
        if user is None:
            raise UserError("There is no such user.")
        was_admin = user.role == Role.ADMIN and user.active
        changes: dict = {}
        if role is not None and role != user.role:
            changes["role"] = [user.role, role]
            user.role = role
        if active is not None and active != user.active:
            changes["active"] = [user.active, active]
            user.active = active
        if password_hash:
            changes["password"] = "changed"  # noqa: S105 - what changed, not a password
            user.password_hash = password_hash
        if not changes:
            return user
        if "password" in changes or user.active is False:
            user.session_epoch += 1
        session.flush()
        if was_admin and _active_admins(session) == 0:
            raise UserError("This would leave no active admin: make someone else admin first.")
        audit.record(actor, "users.update", target=user.email, detail=changes, session=session)
    return user
