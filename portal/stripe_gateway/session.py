"""What a Stripe Checkout Session is made of: the request (our authoritative order, nothing from
a browser), the product's lines as Stripe's page shows them, and the session's parameters. Plain
data and pure functions: the calls to Stripe are `portal.stripe_gateway.gateway`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


def session_params(request: CheckoutRequest, lines: Lines) -> dict:
    """The Checkout Session's parameters for `request` (its line items as `lines`): everything
    but the promo's coupon, which the gateway creates first."""
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
    return params


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
