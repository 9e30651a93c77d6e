"""
Initial purchase: Cleeng's front end creates an order and sends the browser to
`GET /cleeng/checkout?orderId=ID`. The portal reads the order (`GET {base}/orders/{id}`, header
`X-Publisher-Token`), shows it, and takes the payment on Stripe's hosted Checkout, saving the card
to a Stripe Customer kept per Cleeng customer (a `setup` mode session when the order total is 0:
a free trial). After payment the fulfil job reports it, exactly once: `POST {base}/payments` with
`status: captured`, `paymentOperation: initial-payment`, the PaymentIntent (or SetupIntent) as
`externalPaymentId`, and the saved card as `paymentDetails` (its `token` is the Stripe
PaymentMethod id, which Cleeng hands back with every renewal). A failed payment is reported as
`rejected` with `rejectedReason`.

Cleeng-managed recurring billing and refunds arrive as webhooks at `POST /webhooks/cleeng`,
authenticated by an HMAC-SHA256 signature of the raw body, and are stored as jobs before the 200:
- `subscriptionReadyForPaymentAuthorisation`: create the recurring order, authorise the saved card
  off-session with manual capture, report `authorized` (or `rejected`);
- `subscriptionReadyForPaymentCapture`: capture that authorisation for the same period and
  `PATCH` the payment to `captured`; with no authorisation, charge the card at once and report
  `captured` or `rejected`;
- `refundPayment`: refund through Stripe, then `PATCH {base}/payments/{id}` to `refunded`;
- `paymentDetailsDeactivated`: detach the card from its Stripe Customer.

Cleeng answers in an envelope, `{"responseData": {...}, "errors": [...]}`."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from portal.checkout import (
    CheckoutError,
    OrderDraft,
)
from portal.config import ConfigError, Settings
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import utcnow
from portal.platforms import CheckoutOptions, Outcome, Platform
from portal.platforms.cleeng.client import (
    INITIAL,
    LOCAL_HOSTS,
    PLATFORM,
    CleengClient,
    already_reported,
    cleeng_id,
    payment_of,
    response_data,
)
from portal.platforms.cleeng.drafts import draft_from_order, timestamp
from portal.platforms.cleeng.models import (
    CleengCustomer,
    CleengPayment,
    CleengPaymentStatus,
    id_of,
    payment_for_order,
)
from portal.platforms.cleeng.renewals import Renewals
from portal.stripe_gateway import StripeGateway
from portal.urls import UnsafeUrl, check_url

log = logging.getLogger("portal.cleeng")


class CleengPlatform(Renewals, Platform):
    name = PLATFORM
    label = "Cleeng"

    def __init__(self, settings: Settings, recorder=None):
        self.settings = settings
        self.client = CleengClient(settings, recorder)
        # The platform charges saved cards itself (renewals), through the same SDK and settings.
        self.stripe = StripeGateway(
            settings.stripe_secret_key,
            settings.stripe_api_base,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=max(settings.http_read_timeout, 30.0),
            recorder=recorder,
        )
        self.return_url = settings.cleeng_return_url
        self.payment_method_id = settings.cleeng_payment_method_id
        if self.return_url:
            _check_return_url(settings, self.return_url)

    # --- the initial purchase -------------------------------------------------------------------

    def refusal(self, order: dict, cleeng_order_id: str) -> CheckoutError | None:
        """Why this Cleeng order cannot be paid here, or None."""
        if str(order.get("id")) != cleeng_order_id:
            return CheckoutError(
                502,
                N_("This order cannot be paid here"),
                N_(
                    "The subscription service sent details we cannot charge. Please contact "
                    "support."
                ),
            )
        method = order.get("paymentMethodId")
        if self.payment_method_id and method is not None and str(method) != self.payment_method_id:
            return CheckoutError(
                403,
                N_("This order cannot be paid here"),
                N_(
                    "It was created for another payment method. Please go back to the "
                    "subscription page and choose how to pay again."
                ),
            )
        expires = timestamp(order.get("expirationDate"))
        if expires is not None and expires <= datetime.now(UTC):
            return CheckoutError(
                410,
                N_("This order has expired"),
                N_(
                    "Orders can be paid for 24 hours. Please go back to the subscription page "
                    "and choose your plan again; you have not been charged."
                ),
            )
        return None

    def draft(self, order: dict, locale: str | None) -> OrderDraft:
        return draft_from_order(order, locale, self.return_url)

    def checkout_options(self, order) -> CheckoutOptions:
        customer = self._stripe_customer(order)
        free = order.amount_minor == 0  # a free trial: save the card, charge nothing now
        return CheckoutOptions(
            tax_included=True,
            mode="setup" if free else "payment",
            customer=customer,
            setup_future_usage=None if free else "off_session",
            cancel_url=f"{self.settings.public_url}/cleeng/orders/{order.reference}/cancelled",
        )

    def _stripe_customer(self, order) -> str:
        """The Stripe Customer of the order's Cleeng customer, created on their first payment."""
        customer_id = (order.platform_data or {}).get("customer_id")
        if not customer_id:
            raise CheckoutError(
                502,
                N_("This order cannot be paid here"),
                N_("The subscription service sent no customer for it. Please contact support."),
            )
        with db.reader() as session:
            known = session.get(CleengCustomer, customer_id)
        if known is not None:
            return known.stripe_customer_id
        try:
            customer = self.stripe.create_customer(
                f"cleeng-customer-{customer_id}",
                email=order.customer_email,
                metadata={"cleeng_customer_id": customer_id},
            )
        except UpstreamError as exc:
            log.warning("Stripe customer for Cleeng %s: %s", customer_id, exc)
            raise CheckoutError(
                503,
                N_("Payment is temporarily unavailable"),
                N_("We could not reach our payment provider. Please try again in a minute."),
            ) from exc
        with db.transaction() as session:
            dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
            session.execute(
                dialect.insert(CleengCustomer)
                .values(
                    customer_id=customer_id,
                    stripe_customer_id=customer["id"],
                    created_at=utcnow(),
                )
                .on_conflict_do_nothing(index_elements=["customer_id"])
            )
        with db.reader() as session:
            return session.get(CleengCustomer, customer_id).stripe_customer_id

    def _saved_card(self, order) -> tuple[dict, str]:
        """The card the learner paid with (or saved, on a free trial), and Stripe's id for the
        payment: the PaymentIntent, or the SetupIntent of a setup-mode session."""
        if order.stripe_payment_intent_id:
            intent = self.stripe.retrieve_payment_intent(
                order.stripe_payment_intent_id, order_id=order.id
            )
            external_id = order.stripe_payment_intent_id
        elif order.stripe_session_id:
            stripe_session = self.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            external_id = id_of(stripe_session.get("setup_intent"))
            if not external_id:
                raise UpstreamError("Stripe session has no SetupIntent", transient=False)
            intent = self.stripe.retrieve_setup_intent(external_id, order_id=order.id)
        else:
            raise UpstreamError("the order was not paid through Stripe", transient=False)
        method_id = id_of(intent.get("payment_method"))
        if not method_id:
            raise UpstreamError(f"Stripe {external_id} has no payment method", transient=False)
        return self.stripe.retrieve_payment_method(method_id, order_id=order.id), external_id

    def _report(self, order, fields: dict, what: str) -> tuple[dict, bool]:
        """POST /payments; (the payment, False), or ({}, True) when Cleeng already has one."""
        response = self.client.create_payment(fields, order_id=order.id if order else None)
        if not response.ok and already_reported(response):
            return {}, True
        return payment_of(response_data(response, what)), False

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        recorded = payment_for_order(order.id)
        if recorded is not None and recorded.reported_at is not None:
            return Outcome(redirect_url=None, note="Cleeng payment already reported")
        method, external_id = self._saved_card(order)
        card = method.get("card") or {}
        params = {
            "holderName": (method.get("billing_details") or {}).get("name") or order.customer_name,
            "lastCardFourDigits": card.get("last4"),
            "variant": card.get("brand"),
            "cardExpirationDate": (
                f"{int(card['exp_month']):02d}/{card['exp_year']}"
                if card.get("exp_month") and card.get("exp_year")
                else None
            ),
        }
        fields = {
            "orderId": cleeng_id(order.platform_ref),
            "status": "captured",
            "paymentOperation": INITIAL,
            "externalPaymentId": external_id,
            "paymentDetails": {
                "token": method["id"],
                "paymentMethodSpecificParams": {k: v for k, v in params.items() if v},
            },
        }
        payment, already = self._report(order, fields, "Cleeng payment")
        self._record_initial(
            order, payment, CleengPaymentStatus.CAPTURED, method["id"], external_id
        )
        note = "Cleeng payment already captured" if already else "Cleeng payment captured"
        return Outcome(
            redirect_url=None,
            note=note,
            detail={
                "payment": payment.get("id"),
                "paymentDetailsId": payment.get("paymentDetailsId"),
            },
        )

    def payment_failed(self, order, reason: str) -> Outcome:
        recorded = payment_for_order(order.id)
        if recorded is not None and recorded.reported_at is not None:
            return Outcome(redirect_url=None, note="Cleeng payment already reported")
        fields = {
            "orderId": cleeng_id(order.platform_ref),
            "status": "rejected",
            "paymentOperation": INITIAL,
            "rejectedReason": (reason or "The payment failed.")[:500],
        }
        intent_id = order.stripe_payment_intent_id
        if not intent_id and order.stripe_session_id:
            stripe_session = self.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            intent_id = id_of(stripe_session.get("payment_intent"))
        if intent_id:
            fields["externalPaymentId"] = intent_id
        payment, already = self._report(order, fields, "Cleeng rejected payment")
        self._record_initial(order, payment, CleengPaymentStatus.REJECTED, None, intent_id)
        return Outcome(
            redirect_url=None,
            note="Cleeng payment already reported" if already else "Cleeng payment rejected",
            detail={"payment": payment.get("id"), "reason": fields["rejectedReason"]},
        )

    def _record_initial(self, order, payment: dict, status, method_id, external_id) -> None:
        values = {
            "operation": INITIAL,
            "order_id": order.id,
            "cleeng_order_id": order.platform_ref,
            "cleeng_payment_id": str(payment["id"]) if payment.get("id") is not None else None,
            "customer_id": (order.platform_data or {}).get("customer_id"),
            "payment_details_id": (
                str(payment["paymentDetailsId"]) if payment.get("paymentDetailsId") else None
            ),
            "stripe_payment_intent_id": external_id,
            "stripe_payment_method_id": method_id,
            "amount_minor": order.amount_paid_minor or 0,
            "currency": order.currency,
            "status": status,
            "rejected_reason": order.failure_reason if status == "rejected" else None,
            "reported_at": utcnow(),
        }
        with db.transaction() as session:
            existing = session.scalar(
                select(CleengPayment).where(
                    CleengPayment.order_id == order.id, CleengPayment.operation == INITIAL
                )
            )
            if existing is None:
                session.add(CleengPayment(**values))
            else:
                for name, value in values.items():
                    if value is not None:
                        setattr(existing, name, value)

    def cancel(self, order) -> Outcome:
        return Outcome(
            redirect_url=order.redirect_url,
            note="nothing to tell Cleeng: an unpaid order expires by itself",
        )

    refund_effects = {  # noqa: RUF012 - read only
        "full": "Cleeng: the payment is reported refunded (refundType refund, the amount).",
        "partial": "Cleeng: the payment is reported refunded for this amount.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """A refund of (part of) an initial payment, whoever made it (the console, Stripe's
        dashboard, a lost dispute): tell Cleeng, as a `refunded` payment update."""
        payment = payment_for_order(order.id)
        if payment is None or payment.cleeng_payment_id is None:
            raise UpstreamError("no Cleeng payment is recorded for this order", transient=False)
        self._report_refund(payment, amount_minor, "Refunded by the merchant", order_id=order.id)
        return Outcome(
            redirect_url=None,
            note=f"Cleeng payment {payment.cleeng_payment_id} refunded",
            detail={"payment": payment.cleeng_payment_id, "amount_minor": amount_minor},
        )


def _check_return_url(settings: Settings, url: str) -> None:
    try:
        host = check_url(url, allow_http="always").host
    except UnsafeUrl as exc:
        raise ConfigError(f"PORTAL_CLEENG_RETURN_URL is refused: {exc}") from None
    parts = urlsplit(url)
    allowed = set(settings.redirect_hosts)
    if settings.sandbox:
        allowed.add((urlsplit(settings.public_url).hostname or "").lower())
    if host not in allowed:
        raise ConfigError(
            f"PORTAL_CLEENG_RETURN_URL points to {host!r}, which is not in PORTAL_REDIRECT_HOSTS"
        )
    if parts.scheme != "https" and host not in LOCAL_HOSTS:
        raise ConfigError("PORTAL_CLEENG_RETURN_URL must be https")
