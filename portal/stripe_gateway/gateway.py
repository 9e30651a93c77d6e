"""Stripe: Checkout Sessions through the official SDK, pointed at `PORTAL_STRIPE_API_BASE`.

The same code talks to real Stripe (test or live mode) and to the sandbox stand-in. Every call is
timed and written to the order's timeline; the secret key never reaches a log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from urllib.parse import quote

import stripe

from portal.http import CallRecord, UpstreamError, new_session
from portal.observability.metrics import observe_upstream, outcome_of
from portal.stripe_gateway.http_client import StripeHttpClient
from portal.stripe_gateway.session import CheckoutRequest, Lines, product_lines, session_params

log = logging.getLogger("portal.stripe")


class StripeGateway:
    def __init__(
        self,
        secret_key: str,
        api_base: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        recorder=None,
    ):
        http_client = StripeHttpClient(
            timeout=(connect_timeout, read_timeout), session=new_session()
        )
        # The SDK retries network errors, 409 and 5xx with back-off, and StripeHttpClient retries
        # 429 (rate limited); both re-send the same idempotency key, so a retried create never
        # makes a second session.
        self.client = stripe.StripeClient(
            secret_key or "sk_test_unset",
            base_addresses={"api": api_base},
            http_client=http_client,
            max_network_retries=2,
        )
        self.recorder = recorder

    def _call(self, what: str, order_id: int | None, func, *args, record=None, **kwargs):
        """`func(*args, **kwargs)`, timed, logged, counted and recorded in the order's timeline:
        by the gateway's recorder, or by `record(CallRecord)` when the caller writes the record
        itself (in a transaction of its own that follows)."""
        started = time.monotonic()
        status = None
        error = None
        try:
            result = func(*args, **kwargs)
            status = 200
            # Plain dicts from here on: the core reads fields, it does not need SDK objects.
            if isinstance(result, stripe.StripeResponse):
                return result.data  # a raw_request's answer, already parsed from JSON
            return result.to_dict() if hasattr(result, "to_dict") else result
        except stripe.StripeError as exc:
            status = exc.http_status
            error = type(exc).__name__
            transient = isinstance(exc, stripe.APIConnectionError | stripe.RateLimitError) or (
                status is not None and status >= 500
            )
            raise UpstreamError(
                f"Stripe {what} failed: {exc.user_message or error}",
                transient=transient,
                status=status,
            ) from exc
        finally:
            elapsed = time.monotonic() - started
            outcome = outcome_of(status, error)
            observe_upstream("stripe", outcome, elapsed)
            duration_ms = int(elapsed * 1000)
            log.info(
                "stripe %s -> %s in %d ms",
                what,
                status if status is not None else error,
                duration_ms,
                extra={"order_id": order_id},
            )
            call = CallRecord("STRIPE", what, status, duration_ms, error)
            if record is not None:
                record(call)
            elif self.recorder is not None and order_id is not None:
                self.recorder(order_id, call)

    def create_session(self, request: CheckoutRequest, *, order_id: int | None = None, record=None):
        """A Checkout Session for `request`. `record`: takes this call's CallRecord instead of
        the gateway's recorder (see _call)."""
        lines = product_lines(request) if request.mode == "payment" else None
        if lines is None:
            lines = Lines(request.description, request.amount_minor, 1)
        params = session_params(request, lines)
        if lines.discount_minor and request.mode == "payment":
            params.pop("allow_promotion_codes", None)  # Stripe takes one or the other
            coupon = self.create_coupon(
                request, lines.discount_minor, order_id=order_id, record=record
            )
            params["discounts"] = [{"coupon": coupon["id"]}]
        # The SDK's raw_request: the same request (authentication, API version, idempotency
        # key, retries, errors raised as StripeError) answered as parsed JSON, without building
        # StripeObjects that _call would only turn back into dicts (~0.5 ms of a handoff).
        return self._call(
            "checkout.sessions.create",
            order_id,
            self.client.raw_request,
            "post",
            "/v1/checkout/sessions",
            idempotency_key=request.idempotency_key,
            record=record,
            **params,
        )

    def create_coupon(
        self, request: CheckoutRequest, amount_off: int, *, order_id=None, record=None
    ):
        """A one-use coupon for this session's promo, named by its code: Stripe's page shows it
        as the discount, under the subtotal. Idempotent with the session's own key."""
        return self._call(
            "coupons.create",
            order_id,
            self.client.raw_request,
            "post",
            "/v1/coupons",
            idempotency_key=f"{request.idempotency_key}-coupon",
            record=record,
            amount_off=amount_off,
            currency=request.currency.lower(),
            duration="once",
            max_redemptions=1,
            name=(request.promo_code or "")[:40],
            metadata={"order_reference": request.order_reference},
        )

    def retrieve_invoice(self, invoice_id: str, *, order_id: int | None = None):
        return self._call(
            "invoices.retrieve",
            order_id,
            self.client.raw_request,
            "get",
            f"/v1/invoices/{quote(invoice_id, safe='')}",
        )

    def retrieve_session(self, session_id: str, *, order_id: int | None = None):
        return self._call(
            "checkout.sessions.retrieve",
            order_id,
            self.client.raw_request,
            "get",
            f"/v1/checkout/sessions/{quote(session_id, safe='')}",
        )

    def expire_session(self, session_id: str, *, order_id: int | None = None):
        return self._call(
            "checkout.sessions.expire",
            order_id,
            self.client.v1.checkout.sessions.expire,
            session_id,
        )

    def list_sessions(self, created_since: int):
        """Every Checkout Session created since a Unix time, across pages."""
        params: dict = {"created": {"gte": created_since}, "limit": 100}
        while True:
            page = self._call(
                "checkout.sessions.list",
                None,
                self.client.v1.checkout.sessions.list,
                params=params,
            )
            yield from page["data"]
            if not page.get("has_more") or not page["data"]:
                return
            params = {**params, "starting_after": page["data"][-1]["id"]}

    def refund(
        self,
        payment_intent_id: str,
        amount_minor: int,
        idempotency_key: str,
        *,
        order_id: int | None = None,
        metadata: dict | None = None,
    ):
        """Refund part or all of a PaymentIntent's charge. The idempotency key makes a repeated
        request (a double click, a retry after a lost answer) one refund, never two."""
        params: dict = {"payment_intent": payment_intent_id, "amount": amount_minor}
        if metadata:
            params["metadata"] = metadata
        return self._call(
            "refunds.create",
            order_id,
            self.client.v1.refunds.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )

    def list_refunds(self, payment_intent_id: str, *, order_id: int | None = None) -> list[dict]:
        """Every refund of a PaymentIntent, across pages (newest first, as Stripe lists)."""
        params: dict = {"payment_intent": payment_intent_id, "limit": 100}
        found: list[dict] = []
        while True:
            page = self._call("refunds.list", order_id, self.client.v1.refunds.list, params=params)
            found.extend(page["data"])
            if not page.get("has_more") or not page["data"]:
                return found
            params = {**params, "starting_after": page["data"][-1]["id"]}

    # --- authorise now, capture later (the merchant API) --------------------------------------

    def capture_payment_intent(
        self,
        payment_intent_id: str,
        idempotency_key: str,
        *,
        amount_minor: int | None = None,
        order_id: int | None = None,
    ):
        """Capture an authorised PaymentIntent: all of it, or `amount_minor` (the rest of the
        hold is released; a PaymentIntent is captured once)."""
        params: dict = {}
        if amount_minor is not None:
            params["amount_to_capture"] = amount_minor
        return self._call(
            "payment_intents.capture",
            order_id,
            self.client.v1.payment_intents.capture,
            payment_intent_id,
            params=params,
            options={"idempotency_key": idempotency_key},
        )

    def cancel_payment_intent(
        self, payment_intent_id: str, *, reason: str | None = None, order_id: int | None = None
    ):
        """Void an uncaptured authorisation (the hold on the card is released)."""
        params: dict = {}
        if reason:
            params["cancellation_reason"] = reason
        return self._call(
            "payment_intents.cancel",
            order_id,
            self.client.v1.payment_intents.cancel,
            payment_intent_id,
            params=params,
        )

    def increment_authorization(
        self, payment_intent_id: str, amount_minor: int, idempotency_key: str, *, order_id=None
    ):
        """Raise an authorisation to `amount_minor` in all; only some cards allow it."""
        return self._call(
            "payment_intents.increment_authorization",
            order_id,
            self.client.v1.payment_intents.increment_authorization,
            payment_intent_id,
            params={"amount": amount_minor},
            options={"idempotency_key": idempotency_key},
        )

    # --- saved cards and off-session charges (the Cleeng connector) ---------------------------

    def create_customer(
        self, idempotency_key: str, *, email: str | None = None, metadata: dict | None = None
    ):
        """A Customer to save payment methods to; the key makes a retried create one Customer."""
        params: dict = {"metadata": metadata or {}}
        if email:
            params["email"] = email
        return self._call(
            "customers.create",
            None,
            self.client.v1.customers.create,
            params=params,
            options={"idempotency_key": idempotency_key},
        )

    def retrieve_payment_intent(self, payment_intent_id: str, *, order_id: int | None = None):
        return self._call(
            "payment_intents.retrieve",
            order_id,
            self.client.v1.payment_intents.retrieve,
            payment_intent_id,
        )

    def retrieve_setup_intent(self, setup_intent_id: str, *, order_id: int | None = None):
        return self._call(
            "setup_intents.retrieve",
            order_id,
            self.client.v1.setup_intents.retrieve,
            setup_intent_id,
        )

    def retrieve_payment_method(self, payment_method_id: str, *, order_id: int | None = None):
        return self._call(
            "payment_methods.retrieve",
            order_id,
            self.client.v1.payment_methods.retrieve,
            payment_method_id,
        )

    def detach_payment_method(self, payment_method_id: str):
        return self._call(
            "payment_methods.detach",
            None,
            self.client.v1.payment_methods.detach,
            payment_method_id,
        )

    def charge_saved_card(
        self,
        *,
        customer: str,
        payment_method: str,
        amount_minor: int,
        currency: str,
        idempotency_key: str,
        description: str | None = None,
        metadata: dict | None = None,
        capture_method: str | None = None,
    ) -> OffSessionCharge:
        """Charge a saved card with the customer away (a renewal). A decline is an answer, not an
        error: it comes back as `declined` with Stripe's message. The idempotency key makes a
        retried charge the same charge (or the same decline), never a second one."""
        params: dict = {
            "amount": amount_minor,
            "currency": currency.lower(),
            "customer": customer,
            "payment_method": payment_method,
            "off_session": True,
            "confirm": True,
            "metadata": metadata or {},
        }
        if description:
            params["description"] = description[:1000]
        if capture_method:
            # "manual": authorise only; the PaymentIntent waits in requires_capture.
            params["capture_method"] = capture_method

        def create():
            try:
                return self.client.v1.payment_intents.create(
                    params=params, options={"idempotency_key": idempotency_key}
                )
            except stripe.CardError as exc:
                # The card said no (declined, insufficient funds, authentication required).
                return {"card_error": (exc.json_body or {}).get("error") or {}}

        result = self._call("payment_intents.create", None, create)
        error = result.get("card_error")
        if error is not None:
            intent = error.get("payment_intent") or {}
            return OffSessionCharge(
                status="declined",
                payment_intent_id=intent.get("id"),
                message=error.get("message") or "The card was declined.",
                decline_code=error.get("decline_code") or error.get("code"),
            )
        return OffSessionCharge(status=result.get("status") or "", payment_intent_id=result["id"])


@dataclass(frozen=True)
class OffSessionCharge:
    """The outcome of `charge_saved_card`: `succeeded`, `declined`, or another PaymentIntent
    status Stripe left the charge in."""

    status: str
    payment_intent_id: str | None
    message: str | None = None
    decline_code: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @property
    def authorised(self) -> bool:
        return self.status == "requires_capture"
