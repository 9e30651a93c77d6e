"""Cleeng-managed recurring billing, refunds and deactivated cards, each started by a webhook job
(`portal.platforms.cleeng.jobs`): the renewal's charge or authorisation on the saved card and
its report to Cleeng, a refund through Stripe, a card detached from its Stripe Customer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from portal.db import db
from portal.http import UpstreamError
from portal.jobs import PermanentJobError
from portal.models import utcnow
from portal.money import (
    MoneyError,
    normalise_currency,
    to_decimal,
)
from portal.platforms.cleeng.client import AUTHORISATION_TOPIC, RECURRING, cleeng_id
from portal.platforms.cleeng.drafts import minor_amount
from portal.platforms.cleeng.models import (
    CleengCustomer,
    CleengPayment,
    CleengPaymentStatus,
    id_of,
    save_payment,
)

log = logging.getLogger("portal.cleeng")


@dataclass(frozen=True)
class Renewal:
    """The fields of a `subscriptionReadyForPayment*` event the portal charges by."""

    subscription_id: str
    customer_id: str
    offer_id: str
    currency: str
    country: str | None
    period: str | None  # the subscription's expirationDate: one charge per period
    payment_details_id: str | None
    token: str | None
    payment_method_id: str | None

    @classmethod
    def from_event(cls, data: dict) -> Renewal:
        missing = [
            name
            for name in ("subscriptionId", "customerId", "offerId", "currency")
            if not data.get(name)
        ]
        if missing:
            raise PermanentJobError(f"Cleeng renewal event without {', '.join(missing)}")
        try:
            currency = normalise_currency(str(data["currency"]))
        except MoneyError as exc:
            raise PermanentJobError(f"Cleeng renewal event: {exc}") from None

        def text(name: str) -> str | None:
            value = data.get(name)
            return None if value is None or value == "" else str(value)

        return cls(
            subscription_id=str(data["subscriptionId"]),
            customer_id=str(data["customerId"]),
            offer_id=str(data["offerId"]),
            currency=currency,
            country=text("paymentCountry") or text("country"),
            period=text("expirationDate"),
            payment_details_id=text("paymentDetailsId"),
            token=text("token"),
            payment_method_id=text("paymentMethodId"),
        )


class Renewals:
    """The webhook jobs' half of `CleengPlatform` (its client, Stripe gateway and reports)."""

    def renew(self, data: dict, key: str, topic: str | None = None) -> str:
        """Charge one renewal of a subscription and report it. Each step is recorded before the
        next, so a retried job resumes where it stopped and never charges twice.

        Split authorise and capture, as Cleeng asks where the gateway allows: an authorisation
        event holds the amount on the card (a PaymentIntent with manual capture) and reports
        `authorized`; the capture event for the same period captures that hold and updates the
        payment to `captured`. A capture event with no authorisation charges at once."""
        renewal = Renewal.from_event(data)
        authorise = topic == AUTHORISATION_TOPIC
        if not authorise:
            held = self._authorised_for(renewal)
            if held is not None:
                return self._capture(held, renewal)
        attempt = self._claim_renewal(renewal, key)
        if attempt is None:
            return f"subscription {renewal.subscription_id}: this period is already paid"
        if attempt.reported_at is not None:
            return f"subscription {renewal.subscription_id}: already reported"
        if attempt.status == CleengPaymentStatus.CHARGING:
            # The saved card first: without one there is nothing to charge, and no order to make.
            try:
                method_id = self._saved_method(renewal)
                customer = self._customer_of(renewal, method_id)
            except PermanentJobError:
                save_payment(attempt.id, renewal_key=None)  # nothing was charged: free the period
                raise
            if attempt.cleeng_order_id is None:
                attempt = self._recurring_order(attempt, renewal)
            attempt = self._charge(attempt, renewal, customer, method_id, authorise=authorise)
        fields = {
            "orderId": cleeng_id(attempt.cleeng_order_id),
            "status": attempt.status,
            "paymentOperation": RECURRING,
            "subscriptionId": cleeng_id(renewal.subscription_id),
        }
        if attempt.stripe_payment_intent_id:
            fields["externalPaymentId"] = attempt.stripe_payment_intent_id
        if renewal.payment_details_id:
            fields["paymentDetailsId"] = cleeng_id(renewal.payment_details_id)
        if attempt.status == CleengPaymentStatus.REJECTED:
            fields["rejectedReason"] = attempt.rejected_reason or "The payment was declined."
        payment, _already = self._report(None, fields, "Cleeng recurring payment")
        save_payment(
            attempt.id,
            cleeng_payment_id=str(payment["id"]) if payment.get("id") is not None else None,
            reported_at=utcnow(),
        )
        return f"subscription {renewal.subscription_id}: {attempt.status}"

    def _claim_renewal(self, renewal: Renewal, key: str) -> CleengPayment | None:
        """This delivery's attempt; None if another delivery already captured the same period
        (an authorisation and a capture event for one renewal: one charge)."""
        with db.reader() as session:
            mine = session.scalar(select(CleengPayment).where(CleengPayment.event_key == key))
        if mine is not None:
            return mine
        renewal_key = f"{renewal.subscription_id}:{renewal.period}" if renewal.period else None
        try:
            with db.transaction() as session:
                attempt = CleengPayment(
                    operation=RECURRING,
                    event_key=key,
                    renewal_key=renewal_key,
                    subscription_id=renewal.subscription_id,
                    customer_id=renewal.customer_id,
                    period=renewal.period,
                    payment_details_id=renewal.payment_details_id,
                    status=CleengPaymentStatus.CHARGING,
                )
                session.add(attempt)
                session.flush()
            return attempt
        except IntegrityError:
            pass
        with db.reader() as session:
            mine = session.scalar(select(CleengPayment).where(CleengPayment.event_key == key))
            holder = session.scalar(
                select(CleengPayment).where(CleengPayment.renewal_key == renewal_key)
            )
        if mine is not None:
            return mine
        if holder is not None and holder.status == CleengPaymentStatus.CAPTURED:
            return None
        raise UpstreamError(
            f"another charge for subscription {renewal.subscription_id} is under way",
            transient=True,
        )

    def _saved_method(self, renewal: Renewal) -> str:
        if renewal.token and renewal.token.startswith("pm_"):
            return renewal.token
        if renewal.payment_details_id:
            with db.reader() as session:
                method = session.scalar(
                    select(CleengPayment.stripe_payment_method_id)
                    .where(
                        CleengPayment.payment_details_id == renewal.payment_details_id,
                        CleengPayment.stripe_payment_method_id.is_not(None),
                    )
                    .order_by(CleengPayment.id.desc())
                )
            if method:
                return method
        raise PermanentJobError(
            f"no saved Stripe card for Cleeng subscription {renewal.subscription_id}"
        )

    def _customer_of(self, renewal: Renewal, method_id: str) -> str:
        with db.reader() as session:
            known = session.get(CleengCustomer, renewal.customer_id)
        if known is not None:
            return known.stripe_customer_id
        customer = id_of(self.stripe.retrieve_payment_method(method_id).get("customer"))
        if not customer:
            raise PermanentJobError(f"Stripe payment method {method_id} has no customer")
        return customer

    def _recurring_order(self, attempt: CleengPayment, renewal: Renewal) -> CleengPayment:
        """`POST /orders` for the renewal; its total is what the card is charged."""
        fields = {
            "customerId": cleeng_id(renewal.customer_id),
            "offerId": renewal.offer_id,
            "currency": renewal.currency,
            "paymentOperation": RECURRING,
            "subscriptionId": cleeng_id(renewal.subscription_id),
        }
        if renewal.country:
            fields["country"] = renewal.country
        method = renewal.payment_method_id or self.payment_method_id
        if method:
            fields["paymentMethodId"] = cleeng_id(method)
        order = self.client.create_order(fields)
        try:
            currency = normalise_currency(str(order.get("currency") or renewal.currency))
            amount = minor_amount(order.get("totalPrice"), currency, "totalPrice", exact=True)
        except (MoneyError, UpstreamError) as exc:
            raise PermanentJobError(f"Cleeng recurring order {order['id']}: {exc}") from None
        return save_payment(
            attempt.id, cleeng_order_id=str(order["id"]), amount_minor=amount, currency=currency
        )

    def _authorised_for(self, renewal: Renewal) -> CleengPayment | None:
        """The authorisation held for this subscription period, if one is waiting for capture."""
        if not renewal.period:
            return None
        with db.reader() as session:
            held = session.scalar(
                select(CleengPayment).where(
                    CleengPayment.renewal_key == f"{renewal.subscription_id}:{renewal.period}"
                )
            )
        if held is None or held.stripe_payment_intent_id is None:
            return None
        if held.status == CleengPaymentStatus.AUTHORISED or (
            held.status == CleengPaymentStatus.CAPTURED
            and held.cleeng_payment_id is not None
            and held.reported_at is None
        ):
            return held
        return None

    def _capture(self, held: CleengPayment, renewal: Renewal) -> str:
        """Capture the period's authorisation at Stripe, then `PATCH` Cleeng's payment to
        `captured` (or `rejected` when the hold is gone: expired or voided at Stripe; Cleeng's
        dunning then sends a new capture, which charges at once). Recorded step by step."""
        if held.reported_at is None and held.status == CleengPaymentStatus.AUTHORISED:
            # Stripe holds the money but Cleeng has not heard of the authorisation yet: its own
            # job reports it first, and this capture is retried after.
            raise UpstreamError(
                f"subscription {renewal.subscription_id}: the authorisation is not reported yet",
                transient=True,
            )
        if held.status == CleengPaymentStatus.AUTHORISED:
            try:
                self.stripe.capture_payment_intent(
                    held.stripe_payment_intent_id,
                    f"cleeng-capture-{held.stripe_payment_intent_id}",
                )
            except UpstreamError as exc:
                if exc.transient:
                    raise
                held = save_payment(
                    held.id,
                    status=CleengPaymentStatus.REJECTED,
                    renewal_key=None,  # the period is free for Cleeng's next attempt
                    rejected_reason=f"The authorisation could not be captured: {exc}"[:500],
                    reported_at=None,
                )
            else:
                held = save_payment(held.id, status=CleengPaymentStatus.CAPTURED, reported_at=None)
        fields = {"status": held.status, "externalPaymentId": held.stripe_payment_intent_id}
        if held.status == CleengPaymentStatus.REJECTED:
            fields["rejectedReason"] = held.rejected_reason or "The authorisation expired."
        self.client.update_payment(held.cleeng_payment_id, fields)
        save_payment(held.id, reported_at=utcnow())
        return f"subscription {renewal.subscription_id}: authorisation {held.status}"

    def _charge(
        self,
        attempt: CleengPayment,
        renewal: Renewal,
        customer: str,
        method_id: str,
        *,
        authorise: bool = False,
    ) -> CleengPayment:
        charge = self.stripe.charge_saved_card(
            customer=customer,
            payment_method=method_id,
            amount_minor=attempt.amount_minor,
            currency=attempt.currency,
            # One charge per subscription period and attempt: a repeat of this attempt is the
            # same charge; a dunning retry after a decline is a new attempt (a new row).
            idempotency_key=(
                f"cleeng-renewal-{renewal.subscription_id}-{renewal.period or key_tail(attempt)}"
                f"-{attempt.id}"
            ),
            description=f"Cleeng subscription {renewal.subscription_id} renewal",
            metadata={
                "cleeng_subscription_id": renewal.subscription_id,
                "cleeng_order_id": attempt.cleeng_order_id,
                "cleeng_customer_id": renewal.customer_id,
            },
            capture_method="manual" if authorise else None,
        )
        if authorise and charge.authorised:
            return save_payment(
                attempt.id,
                status=CleengPaymentStatus.AUTHORISED,
                stripe_payment_intent_id=charge.payment_intent_id,
                stripe_payment_method_id=method_id,
            )
        if charge.succeeded:
            return save_payment(
                attempt.id,
                status=CleengPaymentStatus.CAPTURED,
                stripe_payment_intent_id=charge.payment_intent_id,
                stripe_payment_method_id=method_id,
            )
        if charge.status != "declined":
            raise PermanentJobError(
                f"Stripe left renewal charge {charge.payment_intent_id} {charge.status}"
            )
        log.info(
            "Cleeng subscription %s renewal declined: %s",
            renewal.subscription_id,
            charge.message,
        )
        # A decline frees the period for Cleeng's next dunning attempt.
        return save_payment(
            attempt.id,
            status=CleengPaymentStatus.REJECTED,
            renewal_key=None,
            stripe_payment_intent_id=charge.payment_intent_id,
            stripe_payment_method_id=method_id,
            rejected_reason=charge.message,
        )

    def refund_payment(self, data: dict, key: str) -> str:
        """Cleeng asks for a refund: money back through Stripe first, then tell Cleeng."""
        payment_id = data.get("paymentId")
        external_id = data.get("externalPaymentId")
        with db.reader() as session:
            payment = None
            if payment_id is not None:
                payment = session.scalar(
                    select(CleengPayment).where(CleengPayment.cleeng_payment_id == str(payment_id))
                )
            if payment is None and external_id:
                payment = session.scalar(
                    select(CleengPayment).where(
                        CleengPayment.stripe_payment_intent_id == str(external_id)
                    )
                )
        if payment is None:
            raise PermanentJobError(f"Cleeng asks to refund payment {payment_id}, unknown here")
        if payment.cleeng_payment_id is None and payment_id is not None:
            payment = save_payment(payment.id, cleeng_payment_id=str(payment_id))
        remaining = (payment.amount_minor or 0) - (payment.amount_refunded_minor or 0)
        amount = remaining
        if data.get("amount") is not None:
            try:
                amount = minor_amount(data["amount"], payment.currency, "amount", exact=True)
            except UpstreamError as exc:
                raise PermanentJobError(str(exc)) from None
        if amount > remaining:
            raise PermanentJobError(
                f"Cleeng asks to refund {amount} of payment {payment_id}; {remaining} is left"
            )
        reason = str(data.get("refundedReason") or data.get("reason") or "Refunded in Cleeng")
        intent = payment.stripe_payment_intent_id or ""
        if amount > 0 and intent.startswith("pi_"):
            self.stripe.refund(
                intent,
                amount,
                f"cleeng-refund-{key.removeprefix('cleeng:')[:40]}",
                order_id=payment.order_id,
                # Cleeng asked: its charge.refunded must not report the refund back to it.
                metadata={
                    "cleeng_payment_id": payment.cleeng_payment_id or "",
                    "portal_platform_told": "1",
                },
            )
        self._report_refund(payment, amount, reason, order_id=payment.order_id)
        return f"payment {payment.cleeng_payment_id} refunded"

    def _report_refund(self, payment: CleengPayment, amount_minor: int, reason: str, *, order_id):
        fields = {
            "orderId": cleeng_id(payment.cleeng_order_id),
            "status": "refunded",
            "paymentOperation": payment.operation,
            "refundedReason": reason[:500],
            "amount": float(to_decimal(amount_minor, payment.currency)),
            "refundType": "refund",
        }
        if payment.stripe_payment_intent_id:
            fields["externalPaymentId"] = payment.stripe_payment_intent_id
        self.client.update_payment(payment.cleeng_payment_id, fields, order_id=order_id)
        refunded = (payment.amount_refunded_minor or 0) + amount_minor
        save_payment(
            payment.id,
            amount_refunded_minor=refunded,
            status=(
                CleengPaymentStatus.REFUNDED
                if refunded >= (payment.amount_minor or 0)
                else payment.status
            ),
        )

    def deactivate_payment_details(self, data: dict) -> str:
        """Cleeng deactivated a customer's payment details: the card leaves its Customer."""
        token = str(data.get("token") or "")
        details_id = data.get("paymentDetailsId")
        method_id = token if token.startswith("pm_") else None
        if method_id is None and details_id is not None:
            with db.reader() as session:
                method_id = session.scalar(
                    select(CleengPayment.stripe_payment_method_id)
                    .where(
                        CleengPayment.payment_details_id == str(details_id),
                        CleengPayment.stripe_payment_method_id.is_not(None),
                    )
                    .order_by(CleengPayment.id.desc())
                )
        if not method_id:
            return f"payment details {details_id}: no Stripe card known here"
        method = self.stripe.retrieve_payment_method(method_id)
        if not method.get("customer"):
            return f"{method_id} was already detached"
        self.stripe.detach_payment_method(method_id)
        return f"{method_id} detached"


def key_tail(attempt: CleengPayment) -> str:
    """A stand-in for the period when Cleeng sent none: this delivery's own key."""
    return (attempt.event_key or "").removeprefix("cleeng:")[:16]
