"""Cleeng's API 3.1 (header `X-Publisher-Token`): the client, its envelope
(`{"responseData": {...}, "errors": [...]}`), and the names Cleeng's API and webhooks use.
"""

from __future__ import annotations

import logging
import re

from portal.config import Settings
from portal.http import HttpClient, UpstreamError, classify

log = logging.getLogger("portal.cleeng")


PLATFORM = "cleeng"
ORDER_ID = re.compile(r"[0-9]{1,20}")  # Cleeng ids are integers; nothing else reaches a URL path
INITIAL = "initial-payment"
RECURRING = "recurring-payment"
AUTHORISATION_TOPIC = "subscriptionReadyForPaymentAuthorisation"
SIGNATURE_HEADER = "X-Cleeng-Signature"
RENEWAL_TOPICS = ("subscriptionReadyForPaymentAuthorisation", "subscriptionReadyForPaymentCapture")
# Webhook topic -> the job kind that handles it. Other topics are acknowledged and ignored.
TOPIC_JOBS = {
    **dict.fromkeys(RENEWAL_TOPICS, "cleeng_renewal"),
    "refundPayment": "cleeng_refund",
    "paymentDetailsDeactivated": "cleeng_detach",
}
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost"})


def cleeng_id(value) -> int | str:
    """Cleeng's ids are numbers in its JSON; send them back the same way."""
    text = str(value)
    return int(text) if text.isdigit() else text


def _first_error(body) -> str:
    errors = body.get("errors") if isinstance(body, dict) else None
    if not errors or not isinstance(errors, list):
        return ""
    first = errors[0]
    if isinstance(first, dict):
        return str(first.get("message") or first.get("code") or first)
    return str(first)


def _body(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def response_data(response, what: str) -> dict:
    """`responseData` of a successful answer; an UpstreamError naming Cleeng's first error
    otherwise (408/425/429/5xx may pass, another 4xx will not)."""
    body = _body(response)
    message = _first_error(body)
    if not response.ok:
        error = classify(response, what)
        if message:
            error = UpstreamError(
                f"{error}: {message}", transient=error.transient, status=error.status
            )
        raise error
    if message:
        raise UpstreamError(f"{what}: {message}", transient=False, status=response.status_code)
    data = body.get("responseData")
    if not isinstance(data, dict):
        raise UpstreamError(f"{what}: no responseData", transient=True, status=response.status_code)
    return data


def already_reported(response) -> bool:
    """Cleeng refuses a second payment for an order: our earlier report went through."""
    if response.status_code == 409:
        return True
    return 400 <= response.status_code < 500 and "already" in _first_error(_body(response)).lower()


class CleengClient:
    def __init__(self, settings: Settings, recorder=None):
        self.base = settings.cleeng_api_base
        self.token = settings.cleeng_publisher_token or ""
        self.http = HttpClient(
            "cleeng",
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            recorder=recorder,
        )

    @property
    def configured(self) -> bool:
        return bool(self.token)

    def _request(self, method: str, path: str, *, order_id=None, json_body=None):
        return self.http.request(
            method,
            f"{self.base}{path}",
            json=json_body,
            headers={"X-Publisher-Token": self.token, "Accept": "application/json"},
            order_id=order_id,
        )

    def get_order(self, cleeng_order_id: str, *, order_id=None) -> dict | None:
        """The order, or None when Cleeng does not know it (or no longer keeps it).
        A 403 (another publisher's order) raises UpstreamError with status 403."""
        if not ORDER_ID.fullmatch(cleeng_order_id):
            raise ValueError("not a Cleeng order id")
        response = self._request("GET", f"/orders/{cleeng_order_id}", order_id=order_id)
        if response.status_code in {404, 410}:
            return None
        order = response_data(response, "Cleeng order lookup").get("order")
        if not isinstance(order, dict):
            raise UpstreamError("Cleeng order lookup: no order in the answer", transient=True)
        return order

    def create_order(self, fields: dict) -> dict:
        response = self._request("POST", "/orders", json_body=fields)
        order = response_data(response, "Cleeng order create").get("order")
        if not isinstance(order, dict) or "id" not in order:
            raise UpstreamError("Cleeng order create: no order in the answer", transient=True)
        return order

    def create_payment(self, fields: dict, *, order_id=None):
        """The raw answer: the caller decides whether "already paid" counts as success."""
        return self._request("POST", "/payments", json_body=fields, order_id=order_id)

    def update_payment(self, payment_id: str, fields: dict, *, order_id=None) -> dict:
        if not ORDER_ID.fullmatch(str(payment_id)):
            raise UpstreamError(f"{payment_id!r} is not a Cleeng payment id", transient=False)
        response = self._request(
            "PATCH", f"/payments/{payment_id}", json_body=fields, order_id=order_id
        )
        return payment_of(response_data(response, "Cleeng payment update"))


def payment_of(data: dict) -> dict:
    """A payment answer: `responseData` is the payment, or holds it under `payment`."""
    payment = data.get("payment")
    return payment if isinstance(payment, dict) else data
