"""Stripe: Checkout Sessions through the official SDK, pointed at `PORTAL_STRIPE_API_BASE`.

The same code talks to real Stripe (test or live mode) and to the sandbox stand-in. Every call is
timed and written to the order's timeline; the secret key never reaches a log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import quote

import stripe

from portal import observability
from portal.http import CallRecord, UpstreamError, new_session

log = logging.getLogger("portal.stripe")

# Stripe Checkout's own list of locales; anything else falls back to "auto".
CHECKOUT_LOCALES = frozenset(
    (
        "bg cs da de el en en-GB es es-419 et fi fil fr fr-CA hr hu id it ja ko lt lv ms mt nb "
        "nl pl pt pt-BR ro ru sk sl sv th tr vi zh zh-HK zh-TW"
    ).split()
)


def checkout_locale(locale: str | None) -> str:
    if not locale:
        return "auto"
    locale = locale.replace("_", "-")
    if locale in CHECKOUT_LOCALES:
        return locale
    base = locale.split("-")[0]
    return base if base in CHECKOUT_LOCALES else "auto"


@dataclass(frozen=True)
class CheckoutRequest:
    """What a Checkout Session is created from: our authoritative order, nothing from a browser."""

    order_reference: str
    platform: str
    description: str
    sku: str | None
    currency: str
    amount_minor: int
    tax_minor: int
    tax_label: str | None
    automatic_tax: bool
    customer_email: str | None
    locale: str | None
    success_url: str
    cancel_url: str
    expires_at: datetime
    idempotency_key: str
    # Optional, for platforms that keep the card for later (off-session) charges:
    mode: str = "payment"  # "setup": collect a payment method now, charge nothing
    customer: str | None = None  # the Stripe Customer the payment method is saved to
    setup_future_usage: str | None = None  # "off_session": save the card used to pay
    # Optional, for merchants who authorise now and capture on shipment:
    capture_method: str | None = None  # "manual": authorise only (capture later or cancel)
    incremental_authorization: bool = False  # ask for an authorisation that can be raised
    receipt_email: str | None = None  # Stripe emails its receipt there (portal/receipts.py)
    # What the review page showed, for Stripe's page to show the same: the quantity, the unit
    # price before the promo, and the promo code (a discount on the session).
    quantity: int = 1
    list_unit_minor: int | None = None
    promo_code: str | None = None
    # What Checkout collects from a business buyer (see portal.platforms.CheckoutOptions).
    billing_address_collection: str | None = None
    shipping_countries: tuple[str, ...] = ()
    tax_id_collection: bool = False
    invoice_creation: bool = False
    allow_promotion_codes: bool = False
    phone_number_collection: bool = False
    # Abandoned-checkout recovery (the brand opted in): Stripe keeps a recovery link when the
    # session expires, and asks the buyer's consent to promotional email.
    recovery: bool = False


@dataclass(frozen=True)
class Lines:
    """The product's line on Stripe's page, and the discount Stripe shows under it."""

    name: str
    unit_amount: int
    quantity: int
    discount_minor: int = 0


def product_lines(request: CheckoutRequest) -> Lines:
    """Stripe's page shows what the review page did. A promo: the list unit price times the
    quantity, less a discount of the difference. Else the quantity at the unit price when the
    total divides evenly by it; when it does not (a platform's rounding), one line with the total,
    its name saying how many."""
    quantity = max(1, request.quantity)
    amount = request.amount_minor
    listed = request.list_unit_minor
    if request.promo_code and listed is not None and listed * quantity > amount >= 0:
        return Lines(request.description, listed, quantity, listed * quantity - amount)
    if quantity > 1 and amount % quantity == 0:
        return Lines(request.description, amount // quantity, quantity)
    if quantity > 1:
        return Lines(f"{request.description} (× {quantity})", amount, 1)
    return Lines(request.description, amount, 1)


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
        http_client = observability.StripeHttpClient(
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
            outcome = observability.outcome_of(status, error)
            observability.observe_upstream("stripe", outcome, elapsed)
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
        product_data: dict = {"name": lines.name[:250]}
        if request.sku:
            product_data["metadata"] = {"sku": request.sku}
        price_data: dict = {
            "currency": request.currency.lower(),
            "unit_amount": lines.unit_amount,
            "product_data": product_data,
        }
        if request.automatic_tax:
            price_data["tax_behavior"] = "exclusive"
        line_items = [{"quantity": lines.quantity, "price_data": price_data}]
        if request.tax_minor:
            line_items.append(
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": request.currency.lower(),
                        "unit_amount": request.tax_minor,
                        "product_data": {"name": request.tax_label or "Tax"},
                    },
                }
            )
        metadata = {"order_reference": request.order_reference, "platform": request.platform}
        params: dict = {
            "mode": "payment",
            "line_items": line_items,
            "client_reference_id": request.order_reference,
            "metadata": metadata,
            "payment_intent_data": {"metadata": metadata},
            "success_url": request.success_url,
            "cancel_url": request.cancel_url,
            "expires_at": int(request.expires_at.timestamp()),
            "locale": checkout_locale(request.locale),
        }
        if request.customer_email:
            params["customer_email"] = request.customer_email
        if request.receipt_email:
            params["payment_intent_data"] = {
                **params["payment_intent_data"],
                "receipt_email": request.receipt_email,
            }
        if request.automatic_tax:
            params["automatic_tax"] = {"enabled": True}
            params["billing_address_collection"] = "required"
        params = _capture_params(params, request)
        params = _saved_card_params(params, request)
        params = _collection_params(params, request)
        if request.recovery and request.mode == "payment":
            params["after_expiration"] = {"recovery": {"enabled": True}}
            params["consent_collection"] = {"promotions": "auto"}
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


def _saved_card_params(params: dict, request: CheckoutRequest) -> dict:
    """Checkout Session parameters for a card kept for later: the Customer it is saved to, and
    either `setup_future_usage` on the payment or a `setup` mode session that charges nothing."""
    if request.customer:
        params["customer"] = request.customer
        params.pop("customer_email", None)  # Stripe takes one of the two
    if request.setup_future_usage and request.mode == "payment":
        params["payment_intent_data"] = {
            **params["payment_intent_data"],
            "setup_future_usage": request.setup_future_usage,
        }
    if request.mode != "setup":
        return params
    metadata = params["metadata"]
    setup = {
        key: params[key]
        for key in ("client_reference_id", "metadata", "success_url", "cancel_url", "locale")
    }
    setup.update(
        mode="setup",
        currency=request.currency.lower(),
        setup_intent_data={"metadata": metadata},
        expires_at=params["expires_at"],
    )
    if "customer" in params:
        setup["customer"] = params["customer"]
    return setup


def _collection_params(params: dict, request: CheckoutRequest) -> dict:
    """What Checkout collects from a business buyer: billing and shipping address, tax id,
    phone, promotion codes, and a Stripe invoice for the payment (payment mode only)."""
    if request.mode != "payment":
        return params
    if request.billing_address_collection and "billing_address_collection" not in params:
        params["billing_address_collection"] = request.billing_address_collection
    if request.shipping_countries:
        params["shipping_address_collection"] = {
            "allowed_countries": list(request.shipping_countries)
        }
    if request.tax_id_collection:
        params["tax_id_collection"] = {"enabled": True}
    if request.phone_number_collection:
        params["phone_number_collection"] = {"enabled": True}
    if request.allow_promotion_codes:
        params["allow_promotion_codes"] = True
    if request.invoice_creation:
        params["invoice_creation"] = {
            "enabled": True,
            "invoice_data": {"metadata": dict(params["metadata"])},
        }
    return params


def _capture_params(params: dict, request: CheckoutRequest) -> dict:
    """Checkout Session parameters for an authorisation captured later (`capture_method=manual`)."""
    if request.mode != "payment" or request.capture_method is None:
        return params
    params["payment_intent_data"] = {
        **params["payment_intent_data"],
        "capture_method": request.capture_method,
    }
    if request.incremental_authorization:
        params["payment_method_options"] = {
            "card": {"request_incremental_authorization": "if_available"}
        }
    return params
