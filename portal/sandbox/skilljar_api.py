"""A Skilljar stand-in: the v1 purchase API (shapes from Skilljar's published OpenAPI spec:
Purchase, PurchaseRequest, PurchaseFulfillmentRequest, PurchaseFulfillment) and a demo academy
whose "Proceed to Checkout" sends the browser to the portal's Remote Checkout URL."""

from __future__ import annotations

import base64
import functools
import json
import random
import secrets
import time
from datetime import UTC, datetime

from flask import Blueprint, abort, current_app, g, jsonify, redirect, render_template, request
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from portal.money import format_money
from portal.sandbox.store import objects

bp = Blueprint("sandbox_skilljar", __name__, url_prefix="/sandbox/skilljar")

OFFERS = {
    "intro-python": {
        "sku": "PY-101",
        "description": "Introduction to Python",
        "price_cents": 4900,
        "currency_code": "USD",
    },
    "data-team": {
        "sku": "DS-TEAM",
        "description": "Data Science for Teams (per seat)",
        "price_cents": 12000,
        "currency_code": "EUR",
    },
    "ml-tokyo": {
        "sku": "ML-JP",
        "description": "Machine Learning Basics (Tokyo cohort)",
        "price_cents": 8800,
        "currency_code": "JPY",
    },
}
PROMOS = {"LAUNCH20": 20, "FREE100": 100}
DEMO_LEARNER = {
    "id": "u1demo",
    "email": "ada@example.com",
    "first_name": "Ada",
    "last_name": "Lovelace",
    "full_name": "Ada Lovelace",
}
EDITABLE = {"state", "refunded_at", "refund_cents", "price_cents", "tax_price_cents"}
FULFIL_FIELDS = {
    "state",
    "error_msg",
    "payment_processor_order_id",
    "payment_processor_response_data",
}
STATES = {"CREATED", "SUCCESS", "FAILED", "REFUNDED", "CANCELLED", "FLAGGED", "PENDING"}


def _store():
    return current_app.extensions["sandbox_store"]


def _settings():
    return current_app.config["PORTAL"]


def new_purchase(offer_id: str, quantity: int = 1, promo: str | None = None) -> dict:
    offer = OFFERS[offer_id]
    percent = PROMOS.get((promo or "").upper(), 0)
    unit = offer["price_cents"]
    promo_unit = unit - unit * percent // 100
    purchase_id = secrets.token_hex(8)
    purchase = {
        "id": purchase_id,
        "user": dict(DEMO_LEARNER),
        "state": "CREATED",
        "status_msg": "",
        "purchased_at": None,
        "refunded_at": None,
        "refund_cents": None,
        "payment_processor": "EXTERNAL",
        "order_id": f"sj{purchase_id[:8]}",
        "price_cents": promo_unit * quantity,
        "quantity": quantity,
        "offer_id": offer_id,
        "offer_sku": offer["sku"],
        "offer_description": offer["description"],
        "offer_price_cents": unit,
        "promo_code": (promo or "").upper() if percent else "",
        "promo_code_price_cents": promo_unit if percent else None,
        "promo_code_percent_off": percent or None,
        "promo_code_quantity": quantity if percent else None,
        "tax_price_cents": None,
        "payment_processor_order_id": "",
        "payment_processor_response_data": "",
        "currency_code": offer["currency_code"],
        "created": int(time.time()),
    }
    _store().put("skilljar.purchase", purchase_id, purchase)
    return purchase


@functools.lru_cache(maxsize=8)
def _basic_auth(api_key: str) -> str:
    """The Authorization header that carries the API key (HTTP Basic, empty password)."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def _public(purchase: dict) -> dict:
    return {k: v for k, v in purchase.items() if k != "created"}


# --- the API -------------------------------------------------------------------------------------


@bp.before_request
def api_guard():
    if not request.path.startswith("/sandbox/skilljar/v1/"):
        return None
    settings = _settings()
    control = _store().controls(
        {
            "skilljar_latency_ms": settings.sandbox_latency_ms,
            "skilljar_fault_rate": settings.sandbox_fault_rate,
            "skilljar_timeout_rate": 0.0,
        }
    )
    latency = control["skilljar_latency_ms"]
    if latency:
        time.sleep(latency / 1000)
    header = request.headers.get("Authorization", "")
    if header != _basic_auth(settings.skilljar_api_key):
        return _answer({"detail": "Invalid API key."}, 401)
    fault_rate = control["skilljar_fault_rate"]
    timeout_rate = control["skilljar_timeout_rate"]
    draw = random.random()  # noqa: S311
    if request.method != "GET" and draw < fault_rate:
        return _answer({"detail": "Service unavailable (sandbox fault injection)."}, 503)
    if request.method != "GET" and draw < fault_rate + timeout_rate:
        g.sandbox_late_answer = True  # a timeout: done here, but answered too late (below)
    return None


@bp.after_request
def late_answer(response):
    """The timeout fault: the call took effect, and its answer comes after the portal's read
    timeout, as when a platform's answer is slow or lost on the way back."""
    if g.get("sandbox_late_answer"):
        time.sleep(_settings().http_read_timeout + 0.5)
    return response


def _answer(body: dict, status: int = 200):
    _store().log_call(
        "skilljar", request.method, request.path, request.get_data(as_text=True) or None, status
    )
    response = jsonify(body)
    response.status_code = status
    return response


def _purchase_or_404(purchase_id: str) -> dict:
    purchase = _store().get("skilljar.purchase", purchase_id)
    if purchase is None:
        abort(_answer({"detail": "Not found."}, 404))
    return purchase


@bp.get("/v1/purchases/<purchase_id>")
def get_purchase(purchase_id):
    return _answer(_public(_purchase_or_404(purchase_id)))


def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(_answer({"detail": "JSON object expected."}, 400))
    return data


@bp.put("/v1/purchases/<purchase_id>")
def update_purchase(purchase_id):
    purchase = _purchase_or_404(purchase_id)
    data = _json_body()
    errors = {k: ["This field is read-only or unknown."] for k in data if k not in EDITABLE}
    for key in ("refund_cents", "price_cents", "tax_price_cents"):
        if (
            key in data
            and data[key] is not None
            and (not isinstance(data[key], int) or isinstance(data[key], bool) or data[key] < 0)
        ):
            errors[key] = ["A valid non-negative integer is required."]
    if "state" in data and data["state"] not in STATES:
        errors["state"] = [f'"{data["state"]}" is not a valid choice.']
    if errors:
        return _answer(errors, 400)
    purchase.update(data)
    _store().put("skilljar.purchase", purchase_id, purchase)
    return _answer(_public(purchase))


@bp.post("/v1/purchases/<purchase_id>/fulfill")
def fulfill(purchase_id):
    purchase = _purchase_or_404(purchase_id)
    data = _json_body()
    errors = {k: ["Unknown field."] for k in data if k not in FULFIL_FIELDS}
    if data.get("state") not in {"SUCCESS", "FAILED", "CANCELLED"}:
        errors["state"] = ["One of SUCCESS, FAILED or CANCELLED is required."]
    for key in FULFIL_FIELDS - {"state"}:
        if key in data and (not isinstance(data[key], str) or not data[key]):
            errors[key] = ["This field may not be blank."]
    if errors:
        return _answer(errors, 400)
    was_created = purchase["state"] == "CREATED"
    if was_created:
        purchase["state"] = data["state"]
        purchase["status_msg"] = data.get("error_msg", "")
        purchase["payment_processor_order_id"] = data.get("payment_processor_order_id", "")
        purchase["payment_processor_response_data"] = data.get(
            "payment_processor_response_data", ""
        )
        if data["state"] == "SUCCESS":
            purchase["purchased_at"] = datetime.now(UTC).isoformat()
    if not was_created or not _apply_fulfilment(purchase_id, purchase):
        # Like the real API, a purchase leaves CREATED once: a second, concurrent fulfil
        # (say a retry racing a slow first attempt) is refused, never applied twice.
        current = _store().get("skilljar.purchase", purchase_id) or purchase
        return _answer({"detail": f"Purchase is already {current['state']}."}, 400)
    public = _settings().public_url
    if data["state"] == "SUCCESS":
        redirect_url = f"{public}/sandbox/skilljar/academy/thank-you/{purchase_id}"
    else:
        redirect_url = f"{public}/sandbox/skilljar/academy?returned={purchase_id}"
    return _answer({"redirect_url": redirect_url, "purchase": _public(purchase)})


def _apply_fulfilment(purchase_id: str, purchase: dict) -> bool:
    """Compare-and-set across gunicorn workers: the first fulfil inserts a marker row and
    writes the purchase in the same transaction; any later one fails on the marker."""
    store = _store()
    try:
        with store.engine.begin() as connection:
            connection.execute(
                insert(objects).values(
                    kind="skilljar.fulfil", id=purchase_id, data={}, created=int(time.time())
                )
            )
            store.put("skilljar.purchase", purchase_id, purchase, connection)
    except IntegrityError:
        return False
    return True


# --- the demo academy -----------------------------------------------------------------------------


@bp.get("/academy")
def academy():
    returned = request.args.get("returned")
    purchase = _store().get("skilljar.purchase", returned) if returned else None
    offers = [
        {"id": key, **offer, "price": format_money(offer["price_cents"], offer["currency_code"])}
        for key, offer in OFFERS.items()
    ]
    return render_template("sandbox/academy.html", offers=offers, returned=purchase)


@bp.post("/academy/checkout")
def academy_checkout():
    offer_id = request.form.get("offer", "")
    if offer_id not in OFFERS:
        abort(400)
    try:
        quantity = int(request.form.get("quantity", "1"))
    except ValueError:
        abort(400)
    if not 1 <= quantity <= 100:
        abort(400)
    purchase = new_purchase(offer_id, quantity, request.form.get("promo_code"))
    public = _settings().public_url
    return redirect(f"{public}/skilljar/checkout?purchase_id={purchase['id']}", 303)


@bp.get("/academy/thank-you/<purchase_id>")
def thank_you(purchase_id):
    purchase = _store().get("skilljar.purchase", purchase_id)
    if purchase is None:
        abort(404)
    total = format_money(
        purchase["price_cents"] + (purchase["tax_price_cents"] or 0), purchase["currency_code"]
    )
    return render_template(
        "sandbox/thank_you.html",
        purchase=purchase,
        total=total,
        response_data=_pretty(purchase["payment_processor_response_data"]),
    )


def _pretty(text: str) -> str:
    try:
        return json.dumps(json.loads(text), indent=2)
    except (TypeError, ValueError):
        return text or ""
