"""Skilljar, as an "external payment processor": the Remote Checkout URL and the purchase API.

API facts (Skilljar v1): HTTP Basic with the API key as user name and an empty password;
`GET /v1/purchases/{id}`, `PUT /v1/purchases/{id}` (state, refunded_at, refund_cents, price_cents,
tax_price_cents), `POST /v1/purchases/{id}/fulfill` with state SUCCESS | FAILED | CANCELLED, which
answers `{redirect_url, purchase}`. Only a `CREATED` purchase can be paid.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime

from flask import Blueprint, current_app, request

from portal.checkout import CheckoutError, OrderDraft, find_order, open_order
from portal.config import Settings
from portal.http import HttpClient, UpstreamError, classify
from portal.i18n import N_
from portal.models import OrderState
from portal.money import MAX_MINOR, MoneyError, format_money, normalise_currency
from portal.platforms import Outcome, Platform

PURCHASE_ID = re.compile(r"[0-9a-z]{1,64}")
PAYABLE_STATE = "CREATED"


class SkilljarClient:
    def __init__(self, settings: Settings, recorder=None):
        self.base = settings.skilljar_api_base
        self.auth = (settings.skilljar_api_key or "", "")
        self.http = HttpClient(
            "skilljar",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            recorder=recorder,
        )

    def _url(self, purchase_id: str, suffix: str = "") -> str:
        if not PURCHASE_ID.fullmatch(purchase_id):
            raise ValueError("not a Skilljar purchase id")
        return f"{self.base}/v1/purchases/{purchase_id}{suffix}"

    def get_purchase(self, purchase_id: str, *, order_id=None) -> dict | None:
        """The purchase, or None when Skilljar does not know the id."""
        response = self.http.request(
            "GET",
            self._url(purchase_id),
            auth=self.auth,
            order_id=order_id,
            headers={"Accept": "application/json"},
        )
        if response.status_code == 404:
            return None
        if not response.ok:
            raise classify(response, "Skilljar purchase lookup")
        return _json(response, "Skilljar purchase lookup")

    def update_purchase(self, purchase_id: str, fields: dict, *, order_id=None) -> dict:
        response = self.http.request(
            "PUT",
            self._url(purchase_id),
            json=fields,
            auth=self.auth,
            order_id=order_id,
        )
        if not response.ok:
            raise classify(response, "Skilljar purchase update")
        return _json(response, "Skilljar purchase update")

    def fulfill(self, purchase_id: str, body: dict, *, order_id=None):
        return self.http.request(
            "POST",
            self._url(purchase_id, "/fulfill"),
            json=body,
            auth=self.auth,
            order_id=order_id,
        )


def _json(response, what: str) -> dict:
    try:
        data = response.json()
    except ValueError:
        raise UpstreamError(
            f"{what}: not JSON", transient=True, status=response.status_code
        ) from None
    if not isinstance(data, dict):
        raise UpstreamError(f"{what}: unexpected answer", transient=True)
    return data


def _int(purchase: dict, name: str, *, default=None, minimum=0) -> int | None:
    value = purchase.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= MAX_MINOR:
        raise UpstreamError(f"Skilljar purchase has an invalid {name}", transient=False)
    return value


def draft_from_purchase(purchase: dict, locale: str | None) -> OrderDraft:
    """Map a Skilljar Purchase onto an order. `price_cents` already includes quantity and promo."""
    user = purchase.get("user") or {}
    try:
        currency = normalise_currency(purchase.get("currency_code") or "")
    except MoneyError:
        raise UpstreamError("Skilljar purchase has an unknown currency", transient=False) from None
    promo = purchase.get("promo_code") or None
    has_promo = bool(promo) and bool(
        purchase.get("promo_code_price_cents") is not None or purchase.get("promo_code_percent_off")
    )
    return OrderDraft(
        platform="skilljar",
        platform_ref=str(purchase["id"]),
        description=(purchase.get("offer_description") or "Course purchase").strip(),
        sku=purchase.get("offer_sku") or None,
        quantity=_int(purchase, "quantity", default=1, minimum=1),
        currency=currency,
        amount_minor=_int(purchase, "price_cents"),
        list_unit_minor=_int(purchase, "offer_price_cents", default=None),
        promo_code=promo if has_promo else None,
        customer_email=user.get("email") or None,
        customer_name=user.get("full_name")
        or " ".join(p for p in (user.get("first_name"), user.get("last_name")) if p)
        or None,
        locale=locale,
        platform_data={
            "purchase_id": purchase.get("id"),
            "offer_id": purchase.get("offer_id"),
            "user_id": user.get("id"),
            "promo_code_percent_off": purchase.get("promo_code_percent_off"),
            "promo_code_price_cents": purchase.get("promo_code_price_cents"),
        },
    )


class SkilljarPlatform(Platform):
    name = "skilljar"
    label = "Skilljar"

    def __init__(self, settings: Settings, recorder=None):
        self.client = SkilljarClient(settings, recorder)

    def _already(self, order, wanted: str) -> bool:
        purchase = self.client.get_purchase(order.platform_ref, order_id=order.id)
        return purchase is not None and purchase.get("state") == wanted

    def _fulfill(self, order, body: dict, what: str) -> Outcome:
        response = self.client.fulfill(order.platform_ref, body, order_id=order.id)
        if response.ok:
            data = _json(response, what)
            return Outcome(
                redirect_url=data.get("redirect_url"),
                note=f"Skilljar {what}: {body['state']}",
                detail={"state": (data.get("purchase") or {}).get("state")},
            )
        error = classify(response, f"Skilljar {what}")
        if not error.transient and self._already(order, body["state"]):
            # It went through earlier (our answer was lost): "already done" is success.
            return Outcome(redirect_url=None, note=f"Skilljar purchase already {body['state']}")
        raise error

    def fulfil(self, order, *, retry: bool = False) -> Outcome:
        if retry and self._already(order, "SUCCESS"):
            return Outcome(redirect_url=None, note="Skilljar purchase already SUCCESS")
        if order.tax_paid_minor:
            # Skilljar's receipts and registration emails show the tax actually charged.
            self.client.update_purchase(
                order.platform_ref, {"tax_price_cents": order.tax_paid_minor}, order_id=order.id
            )
        response_data = json.dumps(
            {
                "portal_order": order.reference,
                "checkout_session": order.stripe_session_id,
                "amount_paid": order.amount_paid_minor,
                "tax_paid": order.tax_paid_minor,
                "currency": order.currency,
            },
            separators=(",", ":"),
        )
        body = {"state": "SUCCESS", "payment_processor_response_data": response_data}
        if order.stripe_payment_intent_id:
            body["payment_processor_order_id"] = order.stripe_payment_intent_id
        return self._fulfill(order, body, "fulfil")

    def cancel(self, order) -> Outcome:
        return self._fulfill(order, {"state": "CANCELLED"}, "cancel")

    def payment_failed(self, order, reason: str) -> Outcome:
        body = {"state": "FAILED", "error_msg": (reason or "The payment failed.")[:500]}
        return self._fulfill(order, body, "payment failed")

    refund_effects = {  # noqa: RUF012 - read only
        "full": "Skilljar: the purchase becomes REFUNDED (with refunded_at and refund_cents); "
        "the learner loses access.",
        "partial": "Skilljar: only refund_cents changes; the purchase stays SUCCESS and the "
        "learner keeps the course.",
    }

    def refund(
        self,
        order,
        amount_minor: int,
        *,
        refunded_at: datetime | None = None,
        refund: dict | None = None,
    ) -> Outcome:
        """Refunded in full (the order is `refunded`): the purchase becomes `REFUNDED` with
        `refunded_at` and `refund_cents`. Refunded in part: only `refund_cents` changes and the
        purchase stays `SUCCESS` (the learner keeps the course). `refund_cents` is always the
        running total, so a repeat, or two refunds reported out of order, end the same."""
        full = order.state == OrderState.REFUNDED
        fields: dict = {"refund_cents": order.amount_refunded_minor}
        if full:
            refunded_at = (refunded_at or datetime.now(UTC)).astimezone(UTC)
            fields["refunded_at"] = refunded_at.isoformat().replace("+00:00", "Z")
            fields["state"] = "REFUNDED"
        data = self.client.update_purchase(order.platform_ref, fields, order_id=order.id)
        total = format_money(order.amount_refunded_minor, order.currency)
        return Outcome(
            redirect_url=None,
            note=f"Skilljar told: {total} refunded in all"
            + ("" if full else " (partial: the purchase stays SUCCESS)"),
            detail={"state": data.get("state"), "refund_cents": data.get("refund_cents")},
        )

    def dispute(self, order, dispute: dict) -> Outcome:
        """Skilljar's v1 purchase states have no "disputed"; `FLAGGED` is the one that says the
        purchase is in question without claiming the money came back (`REFUNDED`) or never came
        (`FAILED`). Opened: `FLAGGED`. Won: back to `SUCCESS`. Lost: nothing here, the lost
        dispute reaches `refund` as a full refund (`REFUNDED`)."""
        if dispute["outcome"] == "lost":
            return Outcome(
                redirect_url=None, note="Skilljar: a lost dispute is reported as a refund"
            )
        if dispute["outcome"] == "won" and order.state == OrderState.REFUNDED:
            return Outcome(redirect_url=None, note="Skilljar: the order is refunded; left as it is")
        state = "FLAGGED" if dispute["outcome"] is None else "SUCCESS"
        data = self.client.update_purchase(order.platform_ref, {"state": state}, order_id=order.id)
        return Outcome(
            redirect_url=None,
            note=f"Skilljar told: purchase {state} (dispute {dispute['outcome'] or 'opened'})",
            detail={"state": data.get("state"), "dispute": dispute["id"]},
        )


bp = Blueprint("skilljar", __name__, url_prefix="/skilljar")


@bp.get("/checkout")
def checkout():
    """Skilljar's Remote Checkout URL: `?purchase_id=ID`."""
    from portal.views import learner_locale, render_review, services, show_order

    purchase_id = request.args.get("purchase_id", "")
    if not PURCHASE_ID.fullmatch(purchase_id):
        raise CheckoutError(
            400,
            N_("This checkout link is not valid"),
            N_(
                "The link that brought you here is incomplete or damaged. Please go back to the "
                "course page and choose “Proceed to Checkout” again."
            ),
        )
    existing = find_order("skilljar", purchase_id)
    if existing is not None and (existing.is_paid or existing.state == "processing"):
        return show_order(existing)
    platform: SkilljarPlatform = services().platform("skilljar")
    try:
        purchase = platform.client.get_purchase(
            purchase_id, order_id=existing.id if existing else None
        )
    except UpstreamError as exc:
        current_app.logger.error("Skilljar purchase %s could not be loaded: %s", purchase_id, exc)
        raise CheckoutError(
            503,
            N_("Checkout is temporarily unavailable"),
            N_(
                "We could not load your purchase from the course platform. Please try again in a "
                "few minutes; you have not been charged."
            ),
        ) from exc
    if purchase is None:
        raise CheckoutError(
            404,
            N_("Purchase not found"),
            N_(
                "We could not find this purchase. Please go back to the course page and start the "
                "checkout again."
            ),
        )
    if purchase.get("state") != PAYABLE_STATE:
        raise CheckoutError(
            409,
            N_("This purchase can no longer be paid"),
            N_(
                "This purchase has already been completed or cancelled. Please go back to the "
                "course page; if you have paid, your enrolment is on its way."
            ),
        )
    try:
        draft = draft_from_purchase(purchase, learner_locale())
    except UpstreamError as exc:
        current_app.logger.error("Skilljar purchase %s is malformed: %s", purchase_id, exc)
        raise CheckoutError(
            502,
            N_("This purchase cannot be paid here"),
            N_("The course platform sent details we cannot charge. Please contact support."),
        ) from exc
    order = open_order(draft, existing)
    if order.is_paid:
        return show_order(order)
    return render_review(order)
