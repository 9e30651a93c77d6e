"""Skilljar's purchase API and what a purchase becomes: the client and the order draft.

API facts (Skilljar v1): HTTP Basic with the API key as user name and an empty password;
`GET /v1/purchases/{id}`, `PUT /v1/purchases/{id}` (state, refunded_at, refund_cents, price_cents,
tax_price_cents), `POST /v1/purchases/{id}/fulfill` with state SUCCESS | FAILED | CANCELLED, which
answers `{redirect_url, purchase}`. Only a `CREATED` purchase can be paid.
"""

from __future__ import annotations

import re

from portal.checkout import OrderDraft
from portal.config import Settings
from portal.http import HttpClient, UpstreamError, classify
from portal.money import MAX_MINOR, MoneyError, normalise_currency

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
        return json_body(response, "Skilljar purchase lookup")

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
        return json_body(response, "Skilljar purchase update")

    def fulfill(self, purchase_id: str, body: dict, *, order_id=None):
        return self.http.request(
            "POST",
            self._url(purchase_id, "/fulfill"),
            json=body,
            auth=self.auth,
            order_id=order_id,
        )


def json_body(response, what: str) -> dict:
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
