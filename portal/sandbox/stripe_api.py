"""A Stripe stand-in: the Checkout Session API the portal uses, a hosted payment page with test
cards, and signed webhooks. The portal reaches it through the real `stripe` SDK.

It refuses parameters real Stripe would refuse: request bodies are checked against the SDK's own
typed parameter definitions (`stripe.params.checkout.SessionCreateParams`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
import typing
from datetime import date

import requests
import typing_extensions
from flask import (
    Blueprint,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.exc import IntegrityError

from portal.money import MoneyError, format_money, normalise_currency, to_minor

log = logging.getLogger("portal.sandbox.stripe")
bp = Blueprint("sandbox_stripe", __name__, url_prefix="/sandbox/stripe")

TEST_CARDS = {
    "4242424242424242": None,  # succeeds
    "4000000000000002": "Your card was declined.",
    "4000000000009995": "Your card has insufficient funds.",
    "4000000000000341": "Your card was declined.",  # can be saved (setup); every charge fails
}
# Stand-in for Stripe Tax: percent by customer country.
SANDBOX_TAX = {"GB": 20, "DE": 19, "FR": 20, "NL": 21, "AU": 10, "JP": 10}


class StripeInputError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code=None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code


def _store():
    return current_app.extensions["sandbox_store"]


def _settings():
    return current_app.config["PORTAL"]


def new_id(prefix: str) -> str:
    return f"{prefix}_test_{secrets.token_hex(12)}"


# --- form decoding and validation ------------------------------------------------------------


def decode_form(pairs) -> dict:
    """`line_items[0][price_data][currency]=usd` -> nested dicts and lists, as Stripe reads it."""
    root: dict = {}
    for raw_key, value in pairs:
        parts = raw_key.replace("]", "").split("[")
        node = root
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise StripeInputError(f"Invalid parameter {raw_key}", raw_key)
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        node = {k: _lists(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


_LOCALNS = {"StripeContext": object, "Mapping": typing.Mapping}


@functools.cache
def _type_hints(typed_dict) -> dict:
    """The SDK's TypedDict fields, worked out once (typing.get_type_hints is slow)."""
    return typing.get_type_hints(typed_dict, localns=_LOCALNS, include_extras=True)


_RESERVED = frozenset({"api_key", "stripe_account", "idempotency_key"})
_TYPEDDICT, _UNION, _LITERAL, _LIST, _DICT, _INT, _BOOL, _STR, _ANY = range(9)
# By identity, not equality: Literal["a", "b"] == Literal["b", "a"], and the order of a Union
# or a Literal shows in the error. Each entry keeps its annotation, so no id is ever reused.
_plans: dict[int, tuple] = {}


def _plan(annotation) -> tuple:
    """What `check_params` checks against an annotation, worked out once per annotation
    (typing.get_origin, get_args and is_typeddict cost more than the checks themselves)."""
    entry = _plans.get(id(annotation))
    if entry is None:
        entry = _plans[id(annotation)] = (annotation, _make_plan(annotation))
    return entry[1]


def _make_plan(annotation) -> tuple:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.NotRequired, typing.Required):
        return _plan(args[0])
    if typing_extensions.is_typeddict(annotation):
        return (_TYPEDDICT, annotation)
    if origin is typing.Union:
        return (_UNION, args)
    if origin is typing.Literal:
        return (_LITERAL, frozenset(str(a) for a in args), ", ".join(map(str, args)))
    if origin in (list, typing.List):  # noqa: UP006 - comparing with the SDK's own annotation
        return (_LIST, args[0])
    if origin in (dict, typing.Dict):  # noqa: UP006
        return (_DICT,)
    if annotation is int:
        return (_INT,)
    if annotation is bool:
        return (_BOOL,)
    if annotation is str:
        return (_STR,)
    return (_ANY,)


def check_params(value, annotation, path: str) -> None:
    plan = _plan(annotation)
    kind = plan[0]
    if kind == _TYPEDDICT:
        if not isinstance(value, dict):
            raise StripeInputError(f"Invalid object for {path}", path)
        hints = _type_hints(plan[1])
        for key, item in value.items():
            name = f"{path}[{key}]" if path else key
            if key not in hints or key in _RESERVED:
                raise StripeInputError(f"Received unknown parameter: {name}", name)
            check_params(item, hints[key], name)
        return None
    if kind == _UNION:
        problems = []
        for option in plan[1]:
            try:
                check_params(value, option, path)
                return None
            except StripeInputError as exc:
                problems.append(exc)
        raise problems[0]
    if kind == _LITERAL:
        if str(value) not in plan[1]:
            raise StripeInputError(f"Invalid {path}: must be one of {plan[2]}", path)
        return None
    if kind == _LIST:
        if value == "":
            return None
        if not isinstance(value, list):
            raise StripeInputError(f"Invalid array for {path}", path)
        for index, item in enumerate(value):
            check_params(item, plan[1], f"{path}[{index}]")
        return None
    if kind == _DICT:
        if not isinstance(value, dict):
            raise StripeInputError(f"Invalid hash for {path}", path)
        return None
    if kind == _INT:
        if not isinstance(value, str) or not value.lstrip("-").isdigit():
            raise StripeInputError(f"Invalid integer: {value}", path)
        return None
    if kind == _BOOL:
        if value not in {"true", "false"}:
            raise StripeInputError(f"Invalid boolean: {value}", path)
        return None
    if kind == _STR and not isinstance(value, str):
        raise StripeInputError(f"Invalid string for {path}", path)
    return None


def _create_params_type():
    from stripe.params.checkout import SessionCreateParams

    return SessionCreateParams


# --- API plumbing -------------------------------------------------------------------------------


@bp.before_request
def authenticate():
    if request.path.startswith("/sandbox/stripe/v1/"):
        latency = _store().control("stripe_latency_ms", 0.0)
        if latency:
            time.sleep(latency / 1000)
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {_settings().stripe_secret_key}":
            return _error(StripeInputError("Invalid API Key provided.", status=401))
    return None


def _error(exc: StripeInputError):
    body = {"error": {"type": "invalid_request_error", "message": exc.message}}
    if exc.param:
        body["error"]["param"] = exc.param
    if exc.code:
        body["error"]["code"] = exc.code
    return jsonify(body), exc.status


@bp.errorhandler(StripeInputError)
def input_error(exc):
    return _error(exc)


def _session(session_id: str) -> dict:
    session = _store().get("checkout.session", session_id)
    if session is None:
        raise StripeInputError(
            f"No such checkout.session: '{session_id}'", "id", status=404, code="resource_missing"
        )
    if session["status"] == "open" and session["expires_at"] <= int(time.time()):
        _expire(session)
    return session


@bp.post("/v1/checkout/sessions")
def create_session():
    params = decode_form(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    if key:
        previous = _store().remembered(key)
        if previous is not None:
            if previous.request_hash != digest:
                raise StripeInputError(
                    "Keys for idempotent requests can only be used with the same parameters "
                    "they were first used with.",
                    code="idempotency_error",
                )
            return current_app.response_class(
                previous.response,
                status=previous.status,
                mimetype="application/json",
                headers={"Idempotent-Replayed": "true"},
            )
    check_params(params, _create_params_type(), "")
    session = build_session(params)
    store = _store()
    try:
        store.write(
            [("checkout.session", session["id"], session)],
            remember=(key, digest, session, 200) if key else None,
        )
    except IntegrityError:
        previous = store.remembered(key)  # a concurrent retry with the same key won
        return current_app.response_class(
            previous.response, status=previous.status, mimetype="application/json"
        )
    return jsonify(session)


def build_session(params: dict) -> dict:
    mode = params.get("mode")
    _check_customer(params)
    if mode == "setup":
        return build_setup_session(params)
    if mode != "payment":
        raise StripeInputError("The sandbox supports mode=payment and mode=setup only.", "mode")
    for required in ("success_url", "line_items"):
        if not params.get(required):
            raise StripeInputError(f"Missing required param: {required}.", required)
    now = int(time.time())
    expires_at = int(params.get("expires_at") or now + 24 * 3600)
    if not now + 30 * 60 - 5 <= expires_at <= now + 24 * 3600:
        raise StripeInputError(
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
            "expires_at",
        )
    currency = None
    subtotal = 0
    items = []
    for index, item in enumerate(params["line_items"]):
        price = item.get("price_data")
        if not price:
            raise StripeInputError(
                "The sandbox needs price_data on each line item.",
                f"line_items[{index}][price_data]",
            )
        item_currency = price.get("currency", "")
        try:
            normalise_currency(item_currency)
        except ValueError:
            raise StripeInputError(
                f"Invalid currency: {item_currency}", f"line_items[{index}][price_data][currency]"
            ) from None
        if item_currency != item_currency.lower():
            raise StripeInputError("Currency must be lowercase", "currency")
        if currency and item_currency != currency:
            raise StripeInputError("All line items must share one currency.", "line_items")
        currency = item_currency
        unit_amount = int(price.get("unit_amount", "-1"))
        quantity = int(item.get("quantity", "0"))
        if unit_amount < 0 or quantity < 1:
            raise StripeInputError("Invalid amount or quantity.", f"line_items[{index}]")
        subtotal += unit_amount * quantity
        items.append(
            {
                "description": (price.get("product_data") or {}).get("name", ""),
                "quantity": quantity,
                "unit_amount": unit_amount,
                "amount_total": unit_amount * quantity,
                "currency": currency,
            }
        )
    discount, discounts, discount_name = _session_discount(params, subtotal, currency)
    automatic_tax = (params.get("automatic_tax") or {}).get("enabled") == "true"
    session_id = new_id("cs")
    public = _settings().public_url
    return {
        "id": session_id,
        "object": "checkout.session",
        "livemode": False,
        "mode": "payment",
        "status": "open",
        "payment_status": "unpaid",
        "created": now,
        "expires_at": expires_at,
        "currency": currency,
        "amount_subtotal": subtotal,
        "amount_total": subtotal - discount,
        "total_details": {"amount_discount": discount, "amount_shipping": 0, "amount_tax": 0},
        "discounts": discounts,
        "automatic_tax": {"enabled": automatic_tax, "status": None},
        "client_reference_id": params.get("client_reference_id"),
        "customer_email": params.get("customer_email"),
        "customer": params.get("customer"),
        "customer_details": None,
        "locale": params.get("locale"),
        "metadata": params.get("metadata") or {},
        "payment_intent": None,
        "payment_intent_data": params.get("payment_intent_data") or {},
        "success_url": params["success_url"],
        "cancel_url": params.get("cancel_url"),
        "url": f"{public}/sandbox/stripe/pay/{session_id}",
        "sandbox_line_items": items,
        "sandbox_discount_name": discount_name,
        **_collection(params),
        **_recovery_fields(params),
        "sandbox_payment_method_options": params.get("payment_method_options") or {},
        "sandbox_params": params,
    }


def _recovery_fields(params: dict) -> dict:
    """`after_expiration.recovery` and `consent_collection.promotions`, as Stripe's Session
    shows them: the recovery link appears when the session expires, the buyer's consent when
    they gave it."""
    recovery = (params.get("after_expiration") or {}).get("recovery") or {}
    enabled = _flag(recovery.get("enabled"))
    promotions = (params.get("consent_collection") or {}).get("promotions")
    if promotions not in (None, "auto", "none"):
        raise StripeInputError(
            "Invalid consent_collection[promotions]: must be one of auto or none",
            "consent_collection[promotions]",
        )
    return {
        "after_expiration": (
            {
                "recovery": {
                    "enabled": True,
                    "allow_promotion_codes": _flag(recovery.get("allow_promotion_codes")),
                    "expires_at": None,
                    "url": None,
                }
            }
            if enabled
            else None
        ),
        "consent_collection": {"promotions": promotions} if promotions else None,
        "consent": None,
        "recovered_from": params.get("sandbox_recovered_from"),
    }


RECOVERY_DAYS = 30  # Stripe keeps a recovery link for 30 days


def _expire(session: dict) -> None:
    """Expire an open session; one with recovery enabled gets its recovery link."""
    session.update(status="expired", url=None)
    recovery = (session.get("after_expiration") or {}).get("recovery")
    if recovery and recovery.get("enabled"):
        recovery.update(
            url=f"{_settings().public_url}/sandbox/stripe/recover/{session['id']}",
            expires_at=int(time.time()) + RECOVERY_DAYS * 86400,
        )
    _store().put("checkout.session", session["id"], session)
    send_event("checkout.session.expired", session)


def _flag(value) -> bool:
    return str(value).lower() == "true"


def _collection(params: dict) -> dict:
    """What the session collects from the buyer, as Stripe's Session object shows it."""
    shipping = params.get("shipping_address_collection")
    return {
        "billing_address_collection": params.get("billing_address_collection"),
        "shipping_address_collection": (
            {"allowed_countries": list(shipping.get("allowed_countries") or [])}
            if shipping
            else None
        ),
        "tax_id_collection": {
            "enabled": _flag((params.get("tax_id_collection") or {}).get("enabled"))
        },
        "phone_number_collection": {
            "enabled": _flag((params.get("phone_number_collection") or {}).get("enabled"))
        },
        "allow_promotion_codes": _flag(params.get("allow_promotion_codes")),
        "invoice_creation": {
            "enabled": _flag((params.get("invoice_creation") or {}).get("enabled")),
            "invoice_data": (params.get("invoice_creation") or {}).get("invoice_data") or {},
        },
        "invoice": None,
        "collected_information": None,
    }


# The stand-in's only promotion code: 10% off.
SANDBOX_PROMOTION_CODES = {"SANDBOX10": 10}
TAX_ID_TYPES = ("eu_vat", "gb_vat", "ch_vat", "no_vat", "au_abn", "ca_bn", "us_ein")


def _collect_from_form(session: dict, form) -> tuple[dict, str | None]:
    """What the buyer typed for the session's collection options; an error message if some
    required part is missing (Stripe's page would not let them pay either)."""

    def address(prefix: str) -> dict:
        return {
            "line1": form.get(f"{prefix}_line1", "").strip() or None,
            "line2": None,
            "city": form.get(f"{prefix}_city", "").strip() or None,
            "postal_code": form.get(f"{prefix}_postal_code", "").strip() or None,
            "state": None,
            "country": form.get(f"{prefix}_country", "").strip().upper() or None,
        }

    collected: dict = {"address": None, "phone": None, "tax_ids": [], "shipping": None}
    wants_billing = session.get("billing_address_collection") == "required" or (
        session.get("tax_id_collection") or {}
    ).get("enabled")
    if wants_billing:
        billing = address("billing")
        if not (billing["line1"] and billing["city"] and billing["country"]):
            return collected, "Your billing address is incomplete."
        collected["address"] = billing
    if (session.get("phone_number_collection") or {}).get("enabled"):
        phone = form.get("phone", "").strip()
        if len([c for c in phone if c.isdigit()]) < 6:
            return collected, "Your phone number is incomplete."
        collected["phone"] = phone
    if (session.get("tax_id_collection") or {}).get("enabled") and form.get("tax_id_value"):
        kind = form.get("tax_id_type", "eu_vat")
        if kind not in TAX_ID_TYPES:
            return collected, "Choose the type of your tax ID."
        collected["tax_ids"] = [{"type": kind, "value": form["tax_id_value"].strip()}]
    shipping = session.get("shipping_address_collection")
    if shipping:
        ship_to = address("shipping")
        if not (ship_to["line1"] and ship_to["city"]):
            return collected, "Your shipping address is incomplete."
        if ship_to["country"] not in shipping["allowed_countries"]:
            return collected, "We cannot ship to that country."
        collected["shipping"] = {"name": form.get("shipping_name") or None, "address": ship_to}
    return collected, None


def _promotion(session: dict, form) -> tuple[int, str | None]:
    code = form.get("promotion_code", "").strip().upper()
    if not code or not session.get("allow_promotion_codes"):
        return 0, None
    percent = SANDBOX_PROMOTION_CODES.get(code)
    if percent is None:
        return 0, "This code is invalid."
    return session["amount_subtotal"] * percent // 100, None


def _create_invoice(session: dict, total: int, tax: int, intent_id: str) -> dict:
    invoice_id = new_id("in")
    public = _settings().public_url
    count = len(_store().list("invoice")) + 1
    customer = session.get("customer_details") or {}
    invoice = {
        "id": invoice_id,
        "object": "invoice",
        "number": f"SANDBOX-{count:04d}",
        "status": "paid",
        "currency": session["currency"],
        "amount_paid": total,
        "subtotal": session["amount_subtotal"],
        "tax": tax,
        "total": total,
        "discount": session["total_details"]["amount_discount"],
        "customer_email": customer.get("email"),
        "customer_name": customer.get("name"),
        "customer_address": customer.get("address"),
        "customer_phone": customer.get("phone"),
        "customer_tax_ids": customer.get("tax_ids") or [],
        "customer_shipping": (session.get("collected_information") or {}).get("shipping_details"),
        "payment_intent": intent_id,
        "metadata": (session.get("invoice_creation") or {}).get("invoice_data", {}).get("metadata")
        or {},
        "hosted_invoice_url": f"{public}/sandbox/stripe/invoices/{invoice_id}",
        "invoice_pdf": f"{public}/sandbox/stripe/invoices/{invoice_id}/pdf",
        "sandbox_lines": session.get("sandbox_line_items") or [],
        "created": int(time.time()),
    }
    _store().put("invoice", invoice_id, invoice)
    return invoice


@bp.get("/v1/invoices/<invoice_id>")
def retrieve_invoice(invoice_id):
    invoice = _store().get("invoice", invoice_id)
    if invoice is None:
        raise StripeInputError(
            f"No such invoice: '{invoice_id}'", "id", status=404, code="resource_missing"
        )
    return jsonify({k: v for k, v in invoice.items() if not k.startswith("sandbox_")})


@bp.get("/invoices/<invoice_id>")
@bp.get("/invoices/<invoice_id>/pdf")
def invoice_page(invoice_id):
    """Stripe's hosted invoice page (and, in the sandbox, its printable "PDF")."""
    invoice = _store().get("invoice", invoice_id)
    if invoice is None:
        abort(404)
    return render_template("sandbox/stripe_invoice.html", invoice=invoice)


def _session_discount(params: dict, subtotal: int, currency: str | None):
    """The amount `discounts` takes off the subtotal (a coupon's amount_off or percent_off), and
    the session's `discounts` as Stripe answers them. Stripe takes one discount per session, and
    never together with allow_promotion_codes."""
    wanted = params.get("discounts") or []
    if not wanted:
        return 0, [], None
    if params.get("allow_promotion_codes"):
        raise StripeInputError(
            "You may only specify one of these parameters: allow_promotion_codes, discounts.",
            "discounts",
        )
    if len(wanted) > 1:
        raise StripeInputError("You may only specify one discount.", "discounts")
    (item,) = wanted
    if "coupon" not in item:
        raise StripeInputError(
            "The sandbox has no promotion codes: pass a coupon.", "discounts[0][promotion_code]"
        )
    coupon = _store().get("coupon", item["coupon"])
    if coupon is None:
        raise StripeInputError(
            f"No such coupon: '{item['coupon']}'", "discounts[0][coupon]", code="resource_missing"
        )
    if not coupon["valid"]:
        raise StripeInputError("This coupon is no longer valid.", "discounts[0][coupon]")
    if coupon["amount_off"] is not None:
        if coupon["currency"] != currency:
            raise StripeInputError(
                "The coupon's currency must match the session's.", "discounts[0][coupon]"
            )
        amount = min(coupon["amount_off"], subtotal)
    else:
        amount = subtotal * int(coupon["percent_off"]) // 100
    return amount, [{"coupon": coupon["id"], "promotion_code": None}], coupon["name"]


@bp.post("/v1/coupons")
def create_coupon():
    from stripe.params import CouponCreateParams

    params = decode_form(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    if key:
        previous = _store().remembered(key)
        if previous is not None:
            return current_app.response_class(
                previous.response, status=previous.status, mimetype="application/json"
            )
    check_params(params, CouponCreateParams, "")
    amount_off = params.get("amount_off")
    percent_off = params.get("percent_off")
    if (amount_off is None) == (percent_off is None):
        raise StripeInputError("Coupons take one of amount_off and percent_off.", "amount_off")
    if amount_off is not None and not params.get("currency"):
        raise StripeInputError("A coupon with amount_off needs a currency.", "currency")
    if amount_off is not None and not (amount_off.isdigit() and int(amount_off) > 0):
        raise StripeInputError("Invalid integer: amount_off", "amount_off")
    name = params.get("name")
    if name is not None and len(name) > 40:
        raise StripeInputError("Coupon names are at most 40 characters.", "name")
    coupon = {
        "id": new_id("co"),
        "object": "coupon",
        "amount_off": int(amount_off) if amount_off is not None else None,
        "percent_off": float(percent_off) if percent_off is not None else None,
        "currency": params.get("currency"),
        "duration": params.get("duration", "once"),
        "max_redemptions": int(params["max_redemptions"]) if "max_redemptions" in params else None,
        "name": name,
        "metadata": params.get("metadata") or {},
        "times_redeemed": 0,
        "valid": True,
        "livemode": False,
        "created": int(time.time()),
    }
    store = _store()
    try:
        store.write(
            [("coupon", coupon["id"], coupon)],
            remember=(key, "", coupon, 200) if key else None,
        )
    except IntegrityError:
        previous = store.remembered(key)
        return current_app.response_class(
            previous.response, status=previous.status, mimetype="application/json"
        )
    return jsonify(coupon)


@bp.get("/v1/checkout/sessions/<session_id>")
def retrieve_session(session_id):
    return jsonify(_public(_session(session_id)))


@bp.post("/v1/checkout/sessions/<session_id>/expire")
def expire_session(session_id):
    session = _session(session_id)
    if session["status"] != "open":
        raise StripeInputError(
            f"Only Checkout Sessions with a status of `open` can be expired. This session has a "
            f"status of `{session['status']}`.",
        )
    _expire(session)
    return jsonify(_public(session))


@bp.get("/v1/checkout/sessions")
def list_sessions():
    params = decode_form(request.args.items(multi=True))
    created = params.get("created") or {}
    gte = int(created.get("gte", 0)) if isinstance(created, dict) else int(created)
    limit = min(int(params.get("limit", 10)), 100)
    sessions = _store().list("checkout.session", created_gte=gte)
    after = params.get("starting_after")
    if after:
        ids = [s["id"] for s in sessions]
        sessions = sessions[ids.index(after) + 1 :] if after in ids else []
    page = sessions[:limit]
    return jsonify(
        {
            "object": "list",
            "url": "/v1/checkout/sessions",
            "has_more": len(sessions) > limit,
            "data": [_public(s) for s in page],
        }
    )


@bp.get("/v1/payment_intents/<intent_id>")
def retrieve_payment_intent(intent_id):
    intent = _store().get("payment_intent", intent_id)
    if intent is None:
        raise StripeInputError(
            f"No such payment_intent: '{intent_id}'", "id", status=404, code="resource_missing"
        )
    return jsonify(intent)


def _refund_params_type():
    from stripe.params import RefundCreateParams

    return RefundCreateParams


def _replay(key: str | None, digest: str):
    """The first answer given under an idempotency key, or None; a key reused with other
    parameters is refused, as Stripe does."""
    if not key:
        return None
    previous = _store().remembered(key)
    if previous is None:
        return None
    if previous.request_hash != digest:
        raise StripeInputError(
            "Keys for idempotent requests can only be used with the same parameters they were "
            "first used with.",
            code="idempotency_error",
        )
    return current_app.response_class(
        previous.response,
        status=previous.status,
        mimetype="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def _money(amount: int, currency: str) -> str:
    return format_money(amount, currency, "en")


_refund_lock = threading.Lock()


@bp.post("/v1/refunds")
def create_refund():
    """Refund (part of) a PaymentIntent's charge. Like Stripe: never more than was captured and
    not yet refunded, the amount defaults to all that is left, and each refund updates the
    charge's `amount_refunded` and sends `charge.refunded`."""
    params = decode_form(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    replayed = _replay(key, digest)
    if replayed is not None:
        return replayed
    check_params(params, _refund_params_type(), "")
    with _refund_lock:  # one refund at a time reads and writes a charge's refunded amount
        refund = _refund(params, key, digest)
    if not isinstance(refund, dict):
        return refund  # a concurrent retry with the same key answered first
    send_event("charge.refunded", _store().get("charge", refund["charge"]))
    return jsonify(refund)


def _refund(params: dict, key: str | None, digest: str):
    store = _store()
    charge_id = params.get("charge")
    intent_id = params.get("payment_intent")
    if bool(charge_id) == bool(intent_id):
        raise StripeInputError("You must pass either a charge or a payment_intent.")
    if intent_id:
        intent = store.get("payment_intent", intent_id)
        if intent is None:
            raise StripeInputError(
                f"No such payment_intent: '{intent_id}'",
                "payment_intent",
                status=404,
                code="resource_missing",
            )
        charge_id = intent["latest_charge"]
    charge = store.get("charge", charge_id)
    if charge is None:
        raise StripeInputError(
            f"No such charge: '{charge_id}'", "charge", status=404, code="resource_missing"
        )
    if charge.get("captured") is False:
        raise StripeInputError(
            f"Charge {charge_id} has not been captured: cancel its PaymentIntent instead.",
            code="charge_not_captured",
        )
    remaining = charge.get("amount_captured", charge["amount"]) - charge["amount_refunded"]
    if remaining <= 0:
        raise StripeInputError(
            f"Charge {charge_id} has already been refunded.", code="charge_already_refunded"
        )
    amount = int(params.get("amount", remaining))
    if amount <= 0:
        raise StripeInputError("Invalid positive integer", "amount")
    if amount > remaining:
        currency = charge["currency"]
        raise StripeInputError(
            f"Refund amount ({_money(amount, currency)}) is greater than unrefunded amount on "
            f"charge ({_money(remaining, currency)})",
            "amount",
            code="amount_too_large",
        )
    refund = {
        "id": new_id("re"),
        "object": "refund",
        "amount": amount,
        "charge": charge_id,
        "currency": charge["currency"],
        "payment_intent": charge["payment_intent"],
        "metadata": params.get("metadata") or {},
        "reason": params.get("reason"),
        "status": "succeeded",
        "created": int(time.time()),
    }
    charge["amount_refunded"] += amount
    charge["refunded"] = charge["amount_refunded"] >= charge["amount"]
    try:
        store.write(
            [("refund", refund["id"], refund), ("charge", charge_id, charge)],
            remember=(key, digest, refund, 200) if key else None,
        )
    except IntegrityError:
        return _replay(key, digest)
    return refund


@bp.get("/v1/refunds")
def list_refunds():
    """A PaymentIntent's (or a charge's) refunds, newest first, as Stripe lists them."""
    params = decode_form(request.args.items(multi=True))
    limit = min(int(params.get("limit", 10)), 100)
    wanted = {k: params[k] for k in ("payment_intent", "charge") if params.get(k)}
    found = [
        r
        for r in _store().list("refund")
        if all(r.get(name) == value for name, value in wanted.items())
    ]
    found.sort(key=lambda r: (r["created"], r["id"]), reverse=True)
    after = params.get("starting_after")
    if after:
        ids = [r["id"] for r in found]
        found = found[ids.index(after) + 1 :] if after in ids else []
    return jsonify(
        {
            "object": "list",
            "url": "/v1/refunds",
            "has_more": len(found) > limit,
            "data": found[:limit],
        }
    )


@bp.get("/v1/refunds/<refund_id>")
def retrieve_refund(refund_id):
    refund = _store().get("refund", refund_id)
    if refund is None:
        raise StripeInputError(
            f"No such refund: '{refund_id}'", "id", status=404, code="resource_missing"
        )
    return jsonify(refund)


def _public(session: dict) -> dict:
    return {
        k: v for k, v in session.items() if not k.startswith(("sandbox_", "payment_intent_data"))
    }


# --- the hosted payment page -------------------------------------------------------------------


def _page(session: dict, error: str | None = None, form=None, status: int = 200):
    return render_template(
        "sandbox/stripe_pay.html",
        session=session,
        error=error,
        form=form or {},
        tax_countries=sorted(SANDBOX_TAX) + ["US"],
        tax_id_types=TAX_ID_TYPES,
    ), status


@bp.get("/pay/<session_id>")
def pay_page(session_id):
    try:
        session = _session(session_id)
    except StripeInputError:
        abort(404)
    if session.get("mode") == "setup":
        return setup_page(session)
    return _page(session)


def _card_problem(form) -> str | None:
    number = "".join(ch for ch in form.get("card_number", "") if ch.isdigit())
    expiry = form.get("expiry", "").replace(" ", "")
    cvc = form.get("cvc", "").strip()
    month, _, year = expiry.partition("/")
    if not (month.isdigit() and year.isdigit() and 1 <= int(month) <= 12):
        return "Your card's expiration date is incomplete."
    year_full = 2000 + int(year) if len(year) == 2 else int(year)
    today = date.today()
    if (year_full, int(month)) < (today.year, today.month):
        return "Your card's expiration year is in the past."
    if not (cvc.isdigit() and len(cvc) in (3, 4)):
        return "Your card's security code is incomplete."
    if number not in TEST_CARDS:
        return "Your card number is incorrect. In the sandbox use 4242 4242 4242 4242."
    return TEST_CARDS[number]


@bp.post("/pay/<session_id>")
def pay(session_id):
    try:
        session = _session(session_id)
    except StripeInputError:
        abort(404)
    if session.get("mode") == "setup":
        return pay_setup(session)
    if session["status"] != "open":
        return _page(session, "This checkout session is no longer open.", status=409)
    form = request.form
    email = (form.get("email") or session.get("customer_email") or "").strip()
    if "@" not in email:
        return _page(session, "Your email address is incomplete.", form, 400)
    problem = _card_problem(form)
    if problem:
        return _page(session, problem, form, 402)
    collected, problem = _collect_from_form(session, form)
    if problem:
        return _page(session, problem, form, 400)
    promotion, problem = _promotion(session, form)
    if problem:
        return _page(session, problem, form, 400)
    session["total_details"]["amount_discount"] += promotion
    country = (form.get("country") or (collected["address"] or {}).get("country") or "US").upper()
    tax = 0
    discounted = session["amount_subtotal"] - session["total_details"]["amount_discount"]
    if session["automatic_tax"]["enabled"]:
        tax = discounted * SANDBOX_TAX.get(country, 0) // 100
        session["automatic_tax"]["status"] = "complete"
    intent_id = new_id("pi")
    charge_id = new_id("ch")
    total = discounted + tax
    _redeem_coupons(session)
    number = "".join(ch for ch in form.get("card_number", "") if ch.isdigit())
    _store().put(
        "payment_intent",
        intent_id,
        {
            "id": intent_id,
            "object": "payment_intent",
            "amount": total,
            "amount_received": total,
            "currency": session["currency"],
            "status": "succeeded",
            "latest_charge": charge_id,
            "metadata": (session.get("payment_intent_data") or {}).get("metadata") or {},
            "created": int(time.time()),
        },
    )
    _store().put(
        "charge",
        charge_id,
        {
            "id": charge_id,
            "object": "charge",
            "amount": total,
            "amount_refunded": 0,
            "currency": session["currency"],
            "payment_intent": intent_id,
            "paid": True,
            "payment_method_details": {
                "type": "card",
                "card": {"brand": "visa", "last4": number[-4:]},
            },
            "created": int(time.time()),
        },
    )
    save_card(session, intent_id, number, form)
    session.update(
        status="complete",
        payment_status="paid",
        payment_intent=intent_id,
        amount_total=total,
        url=None,
        customer_details={
            "email": email,
            "name": form.get("name") or None,
            "phone": collected["phone"],
            "address": collected["address"] or {"country": country},
            "tax_exempt": "none",
            "tax_ids": collected["tax_ids"],
        },
    )
    if collected["shipping"]:
        session["collected_information"] = {"shipping_details": collected["shipping"]}
    session["total_details"]["amount_tax"] = tax
    if (session.get("invoice_creation") or {}).get("enabled"):
        session["invoice"] = _create_invoice(session, total, tax, intent_id)["id"]
    authorise_only(session, intent_id, charge_id)
    _store().put("checkout.session", session_id, session)
    send_event("checkout.session.completed", session)
    return redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id), 303)


@bp.post("/pay/<session_id>/leave")
def leave(session_id):
    """The buyer typed their email (and ticked, or not, "Keep me updated"), then closed the tab.
    The sandbox's shortcut: the session expires now instead of at its `expires_at`."""
    try:
        session = _session(session_id)
    except StripeInputError:
        abort(404)
    if session["status"] != "open":
        return _page(session, "This checkout session is no longer open.", status=409)
    email = (request.form.get("email") or session.get("customer_email") or "").strip()
    if email and "@" in email:
        session["customer_details"] = {"email": email}
    if session.get("consent_collection"):
        opted = request.form.get("promotions") == "opt_in"
        session["consent"] = {
            "promotions": "opt_in" if opted else "opt_out",
            "terms_of_service": None,
        }
    _expire(session)
    return render_template("sandbox/stripe_left.html", session=session)


@bp.get("/recover/<session_id>")
def recover(session_id):
    """Stripe's recovery link: a new Checkout Session like the expired one (its items,
    client_reference_id, metadata and URLs), with `recovered_from`; the link opens the same
    new session while it is open."""
    try:
        original = _session(session_id)
    except StripeInputError:
        abort(404)
    recovery = (original.get("after_expiration") or {}).get("recovery") or {}
    if original["status"] != "expired" or not recovery.get("url"):
        abort(404)
    if recovery["expires_at"] <= int(time.time()):
        abort(410)
    for other in _store().list("checkout.session"):
        if other.get("recovered_from") == session_id and other["status"] in ("open", "complete"):
            if other["status"] == "complete":
                abort(410)
            return redirect(other["url"], 303)
    params = {
        k: v
        for k, v in original["sandbox_params"].items()
        if k not in ("expires_at", "after_expiration", "consent_collection")
    }
    params["sandbox_recovered_from"] = session_id
    session = build_session(params)
    if (original.get("customer_details") or {}).get("email"):
        session["customer_email"] = original["customer_details"]["email"]
    _store().put("checkout.session", session["id"], session)
    return redirect(session["url"], 303)


# --- a dashboard: what an operator does in Stripe's own dashboard ---------------------------------


@bp.get("/dashboard")
def dashboard():
    """Recent payments with Stripe's dashboard actions: refund (all or part), and disputes (the
    card holder's bank opens one; it is then won or lost). Each sends the real webhook events."""
    store = _store()
    charges = [c for c in store.list("charge") if c.get("paid")][:20]
    disputes = {d["charge"]: d for d in reversed(store.list("dispute"))}
    return render_template(
        "sandbox/stripe_dashboard.html",
        charges=charges,
        disputes=disputes,
        notice=request.args.get("notice"),
    )


def _back(notice: str):
    return redirect(url_for("sandbox_stripe.dashboard", notice=notice), 303)


@bp.post("/dashboard/charges/<charge_id>/refund")
def dashboard_refund(charge_id):
    """A refund made in the dashboard: `charge.refunded`, as for one made through the API."""
    charge = _store().get("charge", charge_id)
    if charge is None:
        abort(404)
    params: dict = {"charge": charge_id}
    raw = (request.form.get("amount") or "").strip()
    if raw:
        try:
            params["amount"] = to_minor(raw, charge["currency"])
        except MoneyError as exc:
            return _back(f"Not refunded: {exc}")
    try:
        with _refund_lock:
            refund = _refund(params, None, "")
    except StripeInputError as exc:
        return _back(f"Not refunded: {exc.message}")
    send_event("charge.refunded", _store().get("charge", charge_id))
    return _back(f"Refunded {_money(refund['amount'], refund['currency'])} ({refund['id']}).")


@bp.post("/dashboard/charges/<charge_id>/dispute")
def dashboard_dispute(charge_id):
    """The card holder's bank disputes the payment: `charge.dispute.created`."""
    charge = _store().get("charge", charge_id)
    if charge is None:
        abort(404)
    dispute = {
        "id": new_id("dp"),
        "object": "dispute",
        "amount": charge.get("amount_captured", charge["amount"]) - charge["amount_refunded"],
        "currency": charge["currency"],
        "charge": charge_id,
        "payment_intent": charge["payment_intent"],
        "reason": request.form.get("reason") or "fraudulent",
        "status": "needs_response",
        "created": int(time.time()),
    }
    charge["disputed"] = True
    _store().write([("dispute", dispute["id"], dispute), ("charge", charge_id, charge)])
    send_event("charge.dispute.created", dispute)
    return _back(f"Dispute {dispute['id']} opened.")


@bp.post("/dashboard/disputes/<dispute_id>/close")
def dashboard_close_dispute(dispute_id):
    """The bank decides: `charge.dispute.closed` with status `won` or `lost`."""
    dispute = _store().get("dispute", dispute_id)
    outcome = request.form.get("outcome")
    if dispute is None:
        abort(404)
    if outcome not in {"won", "lost"}:
        return _back("Choose won or lost.")
    if dispute["status"] in {"won", "lost"}:
        return _back(f"Dispute {dispute_id} is already {dispute['status']}.")
    dispute["status"] = outcome
    _store().put("dispute", dispute_id, dispute)
    send_event("charge.dispute.closed", dispute)
    return _back(f"Dispute {dispute_id} {outcome}.")


def _redeem_coupons(session: dict) -> None:
    for discount in session.get("discounts") or []:
        coupon = _store().get("coupon", discount["coupon"])
        if coupon is None:
            continue
        coupon["times_redeemed"] += 1
        if coupon["max_redemptions"] and coupon["times_redeemed"] >= coupon["max_redemptions"]:
            coupon["valid"] = False
        _store().put("coupon", coupon["id"], coupon)


# --- webhooks -------------------------------------------------------------------------------------


def sign(payload: str, secret: str, timestamp: int | None = None) -> str:
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def build_event(event_type: str, obj: dict) -> dict:
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "livemode": False,
        "pending_webhooks": 1,
        "type": event_type,
        "data": {"object": _public(obj)},
    }


def deliver(url: str, secret: str, event: dict, attempts: int = 5) -> int | None:
    """POST a signed event like Stripe does, retrying a few times on failure."""
    payload = json.dumps(event)
    status = None
    for attempt in range(attempts):
        try:
            response = requests.post(
                url,
                data=payload,
                timeout=(3.05, 30),
                headers={
                    "Content-Type": "application/json",
                    "Stripe-Signature": sign(payload, secret),
                },
            )
            status = response.status_code
            if response.ok:
                return status
        except requests.RequestException as exc:
            log.warning("sandbox webhook %s to %s failed: %s", event["type"], url, exc)
        time.sleep(min(2**attempt, 10))
    return status


def send_event(event_type: str, obj: dict) -> dict:
    """Record an event and deliver it after the configured delay (negative: don't deliver)."""
    settings = _settings()
    event = build_event(event_type, obj)
    _store().put("event", event["id"], event)
    delay = _store().control("webhook_delay_seconds", settings.sandbox_webhook_delay_seconds)
    if delay >= 0:
        url = settings.public_url + "/webhooks/stripe"
        secret = settings.stripe_webhook_secret[0]

        def later():
            time.sleep(delay)
            deliver(url, secret, event)

        threading.Thread(target=later, daemon=True, name="sandbox-webhook").start()
    return event


# --- saved cards: customers, setup-mode sessions, off-session charges (the Cleeng connector) ------

# Cards that can be saved (a setup-mode session succeeds) although every charge on them fails.
SAVE_ONLY_CARDS = frozenset({"4000000000000341"})
DECLINE_CODES = {"4000000000009995": "insufficient_funds"}


def _params_type(name: str):
    """One of the SDK's published parameter types (`stripe.params.<Name>`)."""
    import stripe.params

    return getattr(stripe.params, name)


def _missing(kind: str, object_id: str, param: str = "id"):
    return StripeInputError(
        f"No such {kind}: '{object_id}'", param, status=404, code="resource_missing"
    )


def _strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if not k.startswith("sandbox_")}


def _check_customer(params: dict) -> None:
    customer = params.get("customer")
    if customer is not None and _store().get("customer", customer) is None:
        raise _missing("customer", customer, "customer")
    if customer is not None and params.get("customer_email"):
        raise StripeInputError(
            "You may only specify one of these parameters: customer, customer_email.", "customer"
        )


def build_setup_session(params: dict) -> dict:
    """A setup-mode Checkout Session: it saves a card and charges nothing."""
    for required in ("success_url", "currency"):
        if not params.get(required):
            raise StripeInputError(f"Missing required param: {required}.", required)
    for refused in ("line_items", "payment_intent_data"):
        if params.get(refused):
            raise StripeInputError(f"You can not pass `{refused}` in `setup` mode.", refused)
    currency = params["currency"]
    try:
        normalise_currency(currency)
    except ValueError:
        raise StripeInputError(f"Invalid currency: {currency}", "currency") from None
    if currency != currency.lower():
        raise StripeInputError("Currency must be lowercase", "currency")
    now = int(time.time())
    expires_at = int(params.get("expires_at") or now + 24 * 3600)
    if not now + 30 * 60 - 5 <= expires_at <= now + 24 * 3600:
        raise StripeInputError(
            "The `expires_at` timestamp must be between 30 minutes and 24 hours from now.",
            "expires_at",
        )
    session_id = new_id("cs")
    return {
        "id": session_id,
        "object": "checkout.session",
        "livemode": False,
        "mode": "setup",
        "status": "open",
        "payment_status": "no_payment_required",
        "created": now,
        "expires_at": expires_at,
        "currency": currency,
        "amount_subtotal": None,
        "amount_total": None,
        "total_details": None,
        "automatic_tax": {"enabled": False, "status": None},
        "client_reference_id": params.get("client_reference_id"),
        "customer": params.get("customer"),
        "customer_email": None,
        "customer_details": None,
        "locale": params.get("locale"),
        "metadata": params.get("metadata") or {},
        "payment_intent": None,
        "setup_intent": None,
        "sandbox_setup_intent_data": params.get("setup_intent_data") or {},
        "success_url": params["success_url"],
        "cancel_url": params.get("cancel_url"),
        "url": f"{_settings().public_url}/sandbox/stripe/pay/{session_id}",
    }


def _new_payment_method(number: str, form, customer: str | None) -> dict:
    month, _, year = form.get("expiry", "").replace(" ", "").partition("/")
    method = {
        "id": new_id("pm"),
        "object": "payment_method",
        "type": "card",
        "customer": customer,
        "billing_details": {
            "name": (form.get("name") or "").strip() or None,
            "email": (form.get("email") or "").strip() or None,
        },
        "card": {
            "brand": "visa",  # every sandbox test card is a Visa
            "last4": number[-4:],
            "exp_month": int(month),
            "exp_year": 2000 + int(year) if len(year) == 2 else int(year),
            "funding": "credit",
        },
        "created": int(time.time()),
        "sandbox_card_number": number,
    }
    _store().put("payment_method", method["id"], method)
    return method


def save_card(session: dict, intent_id: str, number: str, form) -> None:
    """The card a Checkout payment was made with becomes the PaymentIntent's PaymentMethod,
    attached to the session's Customer when `setup_future_usage` asked to keep it."""
    customer = session.get("customer")
    future = (session.get("payment_intent_data") or {}).get("setup_future_usage")
    method = _new_payment_method(number, form, customer if future else None)
    intent = _store().get("payment_intent", intent_id)
    intent.update(payment_method=method["id"], customer=customer, setup_future_usage=future)
    _store().put("payment_intent", intent_id, intent)


def setup_page(session: dict, error: str | None = None, form=None, status: int = 200):
    return render_template(
        "sandbox/cleeng_stripe_setup.html", session=session, error=error, form=form or {}
    ), status


def pay_setup(session: dict):
    """The hosted page of a setup-mode session: the card is checked and saved, nothing charged."""
    if session["status"] != "open":
        return setup_page(session, "This checkout session is no longer open.", status=409)
    form = request.form
    email = (form.get("email") or "").strip()
    if "@" not in email:
        return setup_page(session, "Your email address is incomplete.", form, 400)
    number = "".join(ch for ch in form.get("card_number", "") if ch.isdigit())
    problem = _card_problem(form)
    if problem and not (number in SAVE_ONLY_CARDS and problem == TEST_CARDS[number]):
        return setup_page(session, problem, form, 402)
    method = _new_payment_method(number, form, session.get("customer"))
    setup_id = new_id("seti")
    _store().put(
        "setup_intent",
        setup_id,
        {
            "id": setup_id,
            "object": "setup_intent",
            "status": "succeeded",
            "usage": "off_session",
            "customer": session.get("customer"),
            "payment_method": method["id"],
            "metadata": session["sandbox_setup_intent_data"].get("metadata") or {},
            "created": int(time.time()),
        },
    )
    session.update(
        status="complete",
        setup_intent=setup_id,
        url=None,
        customer_details={"email": email, "name": form.get("name") or None},
    )
    _store().put("checkout.session", session["id"], session)
    send_event("checkout.session.completed", session)
    return redirect(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session["id"]), 303)


def _create_once(params_type, build):
    """A create call as Stripe answers it: the first answer under an idempotency key is the
    answer to every retry with that key (declines included); parameters are checked against the
    SDK's typed definition. `build(params)` -> (body, status, [(kind, id, object) to store])."""
    params = decode_form(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    replayed = _replay(key, digest)
    if replayed is not None:
        return replayed
    check_params(params, params_type, "")
    body, status, objects = build(params)
    store = _store()
    try:
        store.write(objects, remember=(key, digest, body, status) if key else None)
    except IntegrityError:
        return _replay(key, digest)
    return jsonify(body), status


@bp.post("/v1/customers")
def create_customer():
    def build(params):
        customer = {
            "id": new_id("cus"),
            "object": "customer",
            "email": params.get("email"),
            "metadata": params.get("metadata") or {},
            "created": int(time.time()),
        }
        return customer, 200, [("customer", customer["id"], customer)]

    return _create_once(_params_type("CustomerCreateParams"), build)


@bp.get("/v1/customers/<customer_id>")
def retrieve_customer(customer_id):
    customer = _store().get("customer", customer_id)
    if customer is None:
        raise _missing("customer", customer_id)
    return jsonify(customer)


def _payment_method(method_id: str) -> dict:
    method = _store().get("payment_method", method_id)
    if method is None:
        raise _missing("payment_method", method_id)
    return method


@bp.get("/v1/payment_methods/<method_id>")
def retrieve_payment_method(method_id):
    return jsonify(_strip(_payment_method(method_id)))


@bp.post("/v1/payment_methods/<method_id>/detach")
def detach_payment_method(method_id):
    method = _payment_method(method_id)
    if not method.get("customer"):
        raise StripeInputError(
            "The payment method you provided is not attached to a customer so detachment is "
            "impossible."
        )
    method["customer"] = None
    _store().put("payment_method", method_id, method)
    return jsonify(_strip(method))


@bp.get("/v1/setup_intents/<setup_id>")
def retrieve_setup_intent(setup_id):
    setup = _store().get("setup_intent", setup_id)
    if setup is None:
        raise _missing("setup_intent", setup_id)
    return jsonify(setup)


@bp.post("/v1/payment_intents")
def create_payment_intent():
    """A PaymentIntent confirmed at once with a saved card, the customer away (a renewal): it
    succeeds, or answers 402 with a card error, as Stripe does, for the sandbox's test cards.
    With `capture_method=manual` the card is only authorised: the PaymentIntent waits in
    `requires_capture` (capture it with /capture, void it with /cancel)."""

    def build(params):
        if params.get("confirm") != "true" or params.get("off_session") != "true":
            raise StripeInputError(
                "The sandbox supports PaymentIntents confirmed off-session only "
                "(confirm=true, off_session=true).",
                "confirm",
            )
        for required in ("amount", "currency", "customer", "payment_method"):
            if not params.get(required):
                raise StripeInputError(f"Missing required param: {required}.", required)
        currency = params["currency"]
        try:
            normalise_currency(currency)
        except ValueError:
            raise StripeInputError(f"Invalid currency: {currency}", "currency") from None
        amount = int(params["amount"])
        if amount < 1:
            raise StripeInputError("Amount must be at least 1.", "amount")
        capture_method = params.get("capture_method", "automatic")
        if capture_method not in {"automatic", "automatic_async", "manual"}:
            raise StripeInputError(
                "Invalid capture_method: must be one of automatic, automatic_async, or manual",
                "capture_method",
            )
        if _store().get("customer", params["customer"]) is None:
            raise _missing("customer", params["customer"], "customer")
        method = _payment_method(params["payment_method"])
        if method.get("customer") != params["customer"]:
            raise StripeInputError(
                f"The payment method you provided is not attached to customer "
                f"{params['customer']}.",
                "payment_method",
            )
        now = int(time.time())
        intent = {
            "id": new_id("pi"),
            "object": "payment_intent",
            "amount": amount,
            "amount_received": 0,
            "currency": currency,
            "customer": params["customer"],
            "payment_method": method["id"],
            "description": params.get("description"),
            "metadata": params.get("metadata") or {},
            "created": now,
        }
        number = method["sandbox_card_number"]
        problem = TEST_CARDS.get(number)
        if problem:
            intent.update(
                status="requires_payment_method",
                latest_charge=None,
                last_payment_error={"code": "card_declined", "message": problem},
            )
            error = {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": DECLINE_CODES.get(number, "generic_decline"),
                "message": problem,
                "payment_intent": intent,
            }
            return {"error": error}, 402, [("payment_intent", intent["id"], intent)]
        charge = {
            "id": new_id("ch"),
            "object": "charge",
            "amount": amount,
            "amount_refunded": 0,
            "currency": currency,
            "payment_intent": intent["id"],
            "paid": True,
            "payment_method_details": {"type": "card", "card": _strip(method)["card"]},
            "created": now,
        }
        intent.update(
            status="succeeded",
            amount_received=amount,
            latest_charge=charge["id"],
            capture_method=capture_method,
            amount_capturable=0,
        )
        charge.update(captured=True, amount_captured=amount)
        if capture_method == "manual":
            # Authorised only: nothing is received until the capture.
            intent.update(status="requires_capture", amount_received=0, amount_capturable=amount)
            charge.update(captured=False, amount_captured=0)
        return (
            intent,
            200,
            [("payment_intent", intent["id"], intent), ("charge", charge["id"], charge)],
        )

    return _create_once(_params_type("PaymentIntentCreateParams"), build)


# --- authorise now, capture later (the merchant API) ----------------------------------------------


def authorise_only(session: dict, intent_id: str, charge_id: str) -> None:
    """A session with `payment_intent_data[capture_method]=manual`: the card is authorised and
    nothing is captured; the PaymentIntent waits in `requires_capture` and the completed session
    reports `unpaid` (the funds are not in the account yet)."""
    intent_data = session.get("payment_intent_data") or {}
    if intent_data.get("capture_method") != "manual":
        return
    card_options = (session.get("sandbox_payment_method_options") or {}).get("card") or {}
    intent = _store().get("payment_intent", intent_id)
    intent.update(
        status="requires_capture",
        capture_method="manual",
        amount_received=0,
        amount_capturable=intent["amount"],
        sandbox_incremental=card_options.get("request_incremental_authorization") == "if_available",
    )
    charge = _store().get("charge", charge_id)
    charge.update(captured=False, amount_captured=0)
    _store().put("payment_intent", intent_id, intent)
    _store().put("charge", charge_id, charge)
    session["payment_status"] = "unpaid"


def _intent(intent_id: str) -> dict:
    intent = _store().get("payment_intent", intent_id)
    if intent is None:
        raise _missing("payment_intent", intent_id)
    return intent


def _requires_capture(intent: dict, action: str) -> None:
    if intent.get("status") != "requires_capture":
        raise StripeInputError(
            f"This PaymentIntent could not be {action} because it has a status of "
            f"{intent.get('status')}. Only a PaymentIntent with one of the following statuses "
            "may be " + action + ": requires_capture.",
            code="payment_intent_unexpected_state",
        )


_capture_lock = threading.Lock()


def _intent_call(params_type, intent_id: str, act):
    """A POST on one PaymentIntent, checked against the SDK's typed params, once per
    idempotency key; `act(intent, params)` changes and returns the intent (and stores it)."""
    params = decode_form(request.form.items(multi=True))
    key = request.headers.get("Idempotency-Key")
    digest = hashlib.sha256(json.dumps([intent_id, params], sort_keys=True).encode()).hexdigest()
    replayed = _replay(key, digest)
    if replayed is not None:
        return replayed
    check_params(params, params_type, "")
    with _capture_lock:
        intent = act(_intent(intent_id), params)
        body = _strip(intent)
        store = _store()
        try:
            store.write(
                [("payment_intent", intent_id, intent)],
                remember=(key, digest, body, 200) if key else None,
            )
        except IntegrityError:
            return _replay(key, digest)
    return jsonify(body)


@bp.post("/v1/payment_intents/<intent_id>/capture")
def capture_payment_intent(intent_id):
    """Capture all of an authorisation or `amount_to_capture` of it (the rest is released)."""

    def act(intent, params):
        _requires_capture(intent, "captured")
        amount = int(params.get("amount_to_capture", intent["amount_capturable"]))
        if not 1 <= amount <= intent["amount_capturable"]:
            raise StripeInputError(
                "The amount to capture must be at least 1 and at most the amount capturable "
                f"({intent['amount_capturable']}).",
                "amount_to_capture",
                code="amount_too_large",
            )
        charge = _store().get("charge", intent["latest_charge"])
        charge.update(captured=True, amount_captured=amount)
        _store().put("charge", charge["id"], charge)
        intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
        send_event("payment_intent.succeeded", intent)
        return intent

    return _intent_call(
        _params_type("PaymentIntentCaptureParams"),
        intent_id,
        act,
    )


@bp.post("/v1/payment_intents/<intent_id>/cancel")
def cancel_payment_intent(intent_id):
    """Void an authorisation (or an unfinished PaymentIntent); a captured one cannot be."""

    def act(intent, params):
        if intent.get("status") in {"succeeded", "canceled"}:
            raise StripeInputError(
                "You cannot cancel this PaymentIntent because it has a status of "
                f"{intent['status']}.",
                code="payment_intent_unexpected_state",
            )
        intent.update(
            status="canceled",
            amount_capturable=0,
            cancellation_reason=params.get("cancellation_reason"),
            canceled_at=int(time.time()),
        )
        send_event("payment_intent.canceled", intent)
        return intent

    return _intent_call(
        _params_type("PaymentIntentCancelParams"),
        intent_id,
        act,
    )


@bp.post("/v1/payment_intents/<intent_id>/increment_authorization")
def increment_authorization(intent_id):
    """Raise an authorisation, for sessions that asked for
    `payment_method_options[card][request_incremental_authorization]=if_available`."""

    def act(intent, params):
        _requires_capture(intent, "incremented")
        if not intent.get("sandbox_incremental"):
            raise StripeInputError(
                "This PaymentIntent is not eligible for incremental authorization.",
                code="incremental_authorization_not_supported",
            )
        amount = int(params["amount"])
        if amount <= intent["amount"]:
            raise StripeInputError(
                "The new amount must be greater than the current amount.", "amount"
            )
        intent.update(amount=amount, amount_capturable=amount)
        charge = _store().get("charge", intent["latest_charge"])
        charge["amount"] = amount
        _store().put("charge", charge["id"], charge)
        return intent

    return _intent_call(
        _params_type("PaymentIntentIncrementAuthorizationParams"),
        intent_id,
        act,
    )
