"""A demo merchant system (an ERP) on the portal's merchant API, and the caught-mail page: so
`make demo` shows pay-by-link end to end. The page calls `/api/v1` over real HTTP with a demo
key it makes on first use, and its webhook receiver checks every signature."""

from __future__ import annotations

import json
import time
from urllib.parse import urlsplit

import requests
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    get_flashed_messages,
    redirect,
    render_template,
    request,
    url_for,
)

from portal.api import keys, webhooks_out
from portal.api.errors import ApiError
from portal.money import MoneyError, to_minor
from portal.outbound import allow_loopback

bp = Blueprint("sandbox_merchant", __name__, url_prefix="/sandbox")

DEMO_KEY = "demo"


def _store():
    return current_app.extensions["sandbox_store"]


def _settings():
    return current_app.config["PORTAL"]


def demo_key() -> dict:
    """The demo merchant's key and webhook secret, made on first use (kept in the sandbox store,
    which plays the merchant's own configuration)."""
    saved = _store().get("merchant_key", DEMO_KEY)
    if saved is not None:
        try:
            keys.authenticate(f"Bearer {saved['secret']}", _settings())
            return saved
        except ApiError:
            pass  # the portal's database was reset: make a new one
    public = _settings().public_url
    made = keys.create_key(
        "Sandbox demo merchant",
        allowed_hosts=[urlsplit(public).hostname],
        brand_name="Demo Supplies Ltd",
        webhook_url=public + url_for("sandbox_merchant.receive_webhook"),
        loopback_ok=allow_loopback(_settings()),
    )
    saved = {"secret": made.secret, "webhook_secret": made.endpoint.secret, "created": 0}
    _store().put("merchant_key", DEMO_KEY, saved)
    return saved


def call_api(method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    key = demo_key()
    response = requests.request(
        method,
        _settings().public_url + "/api/v1" + path,
        json=body,
        headers={"Authorization": f"Bearer {key['secret']}"},
        timeout=30,
    )
    return response.status_code, response.json()


def _remember(order: dict) -> None:
    _store().put("merchant_order", order["id"], {**order, "created": int(time.time())})


@bp.get("/merchant")
def merchant():
    orders = []
    for saved in _store().list("merchant_order")[:15]:
        status, order = call_api("GET", f"/orders/{saved['id']}")
        orders.append(order if status == 200 else saved)
    return render_template(
        "sandbox/merchant_index.html",
        orders=orders,
        webhooks=_store().list("merchant_webhook")[:20],
        messages=get_flashed_messages(),
    )


@bp.post("/merchant/send")
def send_link():
    form = request.form
    currency = form.get("currency", "USD")
    try:
        unit_amount = to_minor(form.get("unit_price", "0"), currency)
        quantity = int(form.get("quantity", "1"))
    except (MoneyError, ValueError):
        flash("Enter a price like 12.50 and a whole quantity.")
        return redirect(url_for("sandbox_merchant.merchant"), 303)
    public = _settings().public_url
    body = {
        "mode": form.get("mode", "link"),
        "capture_method": "manual" if form.get("manual") else "automatic",
        "currency": currency,
        "items": [
            {
                "name": form.get("item", "Seat licence"),
                "unit_amount": unit_amount,
                "quantity": quantity,
            }
        ],
        "customer": {
            "email": form.get("email", ""),
            "name": form.get("name") or None,
            "company": form.get("company") or None,
        },
        "reference": form.get("reference") or f"ERP-{int(time.time())}",
        "success_url": public + url_for("sandbox_merchant.thank_you"),
        "cancel_url": public + url_for("sandbox_merchant.merchant"),
    }
    if form.get("sales_rep_email"):
        body["sales_rep_email"] = form["sales_rep_email"]
    options = {
        "tax_id_collection": bool(form.get("tax_id_collection")),
        "invoice_creation": bool(form.get("invoice_creation")),
        "allow_promotion_codes": bool(form.get("promotion_codes")),
        "phone_number_collection": bool(form.get("phone")),
    }
    if form.get("billing_required"):
        options["billing_address_collection"] = "required"
    if form.get("shipping"):
        options["shipping_address_countries"] = ["GB", "IE", "FR", "DE", "NL", "US"]
    options = {name: value for name, value in options.items() if value}
    if options:
        body["checkout_options"] = options
    status, answer = call_api("POST", "/checkout-sessions", body)
    if status != 200:
        flash(f"The API said {status}: {answer['error']['message']}")
        return redirect(url_for("sandbox_merchant.merchant"), 303)
    _remember(answer["order"])
    if body["mode"] == "redirect":
        return redirect(answer["url"], 303)
    flash(f"Pay link for {answer['order']['id']} sent to {body['customer']['email']}.")
    return redirect(url_for("sandbox_merchant.merchant"), 303)


@bp.post("/merchant/orders/<order_id>/<action>")
def order_action(order_id, action):
    if action == "capture":
        status, answer = call_api("POST", f"/orders/{order_id}/capture", {})
    elif action == "cancel":
        status, answer = call_api("POST", f"/orders/{order_id}/cancel", {})
    elif action == "refund":
        status, answer = call_api("POST", "/refunds", {"order": order_id})
    else:
        abort(404)
    if status == 200:
        flash(f"{action.capitalize()}: done.")
    else:
        flash(f"{action.capitalize()}: the API said {status}: {answer['error']['message']}")
    return redirect(url_for("sandbox_merchant.merchant"), 303)


@bp.get("/merchant/thank-you")
def thank_you():
    return render_template("sandbox/merchant_thank_you.html")


@bp.post("/merchant/webhooks")
def receive_webhook():
    """The demo merchant's webhook receiver: signature first, then keep the event."""
    body = request.get_data(as_text=True)
    saved = _store().get("merchant_key", DEMO_KEY)
    header = request.headers.get("Portal-Signature", "")
    if saved is None or not webhooks_out.verify(saved["webhook_secret"], header, body):
        return {"error": "bad signature"}, 400
    event = json.loads(body)
    _store().put(
        "merchant_webhook",
        event["id"],
        {
            "id": event["id"],
            "type": event["type"],
            "order": event["data"]["object"]["id"],
            "status": event["data"]["object"]["status"],
            # What the event adds to the order: the refund, the dispute, the failure.
            "detail": {k: v for k, v in event["data"].items() if k != "object"},
            "created": int(time.time()),
        },
    )
    return {"received": True}


# --- caught mail ---------------------------------------------------------------------------------


@bp.get("/mail")
def mail_index():
    return render_template("sandbox/mail_index.html", messages=_store().list("mail")[:50])


def _message(mail_id: str) -> dict:
    message = _store().get("mail", mail_id)
    if message is None:
        abort(404)
    return message


@bp.get("/mail/<mail_id>")
def mail_message(mail_id):
    return render_template("sandbox/mail_message.html", message=_message(mail_id))


@bp.get("/mail/<mail_id>/html")
def mail_html(mail_id):
    """The HTML part as the customer's mail program shows it (its own inline styles; no script;
    images only from the portal itself, as the brand's logo is, once the reader allows them)."""
    response = current_app.make_response(_message(mail_id)["html"])
    public = urlsplit(_settings().public_url)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'unsafe-inline'; "
        f"img-src data: 'self' {public.scheme}://{public.netloc}; frame-ancestors 'self'"
    )
    response.headers["X-Frame-Options"] = "SAMEORIGIN"
    return response
