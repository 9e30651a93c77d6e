"""Helpers for the merchant API tests: keys, a client that checks every answer against the
OpenAPI document, a sample webhook receiver, and running queued jobs of one kind."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time

from jsonschema import Draft202012Validator, FormatChecker
from sqlalchemy import select

from portal import checkout, jobs
from portal.api import keys, schema
from portal.db import db
from portal.models import Job, JobState, Order, WebhookDelivery

MERCHANT_HOST = "shop.example.com"
HOOK_URL = "https://hooks.example.com/portal"


def make_key(**overrides) -> keys.NewKey:
    name = overrides.pop("name", "Acme ERP")
    options = {
        "allowed_hosts": [MERCHANT_HOST],
        "brand_name": "Acme Supplies",
        "webhook_url": HOOK_URL,
        **overrides,
    }
    return keys.create_key(name, **options)


def session_body(**overrides) -> dict:
    body = {
        "items": [
            {"name": "Seat licence", "unit_amount": 4900, "quantity": 40},
            {"name": "Onboarding", "unit_amount": 25000, "quantity": 1},
        ],
        "currency": "usd",
        "customer": {"email": "buyer@example.com", "name": "Ada Lovelace", "company": "AE plc"},
        "reference": "SO-1001",
        "success_url": f"https://{MERCHANT_HOST}/thanks?so=1001",
        "cancel_url": f"https://{MERCHANT_HOST}/cart",
        "capture_method": "automatic",
        "metadata": {"erp_id": "1001"},
    }
    body.update(overrides)
    return body


def _path_template(path: str) -> tuple[str, dict]:
    relative = path.split("?")[0].removeprefix("/api/v1")
    for template, item in schema.document()["paths"].items():
        pattern = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$"
        if re.match(pattern, relative):
            return template, item
    raise AssertionError(f"{path} is not in the OpenAPI document")


def check_response(method: str, path: str, response) -> None:
    """The answer must be JSON and fit the document's schema for its path, method and status."""
    assert response.mimetype == "application/json", (response.status_code, response.data[:200])
    body = response.get_json()
    doc = schema.document()
    try:
        _template, item = _path_template(path)
        operation = item[method.lower()]
        spec = (
            operation["responses"].get(str(response.status_code))
            or operation["responses"]["default"]
        )
    except (AssertionError, KeyError):
        # Not a documented operation: it must still be the documented error shape.
        spec = {"$ref": "#/components/responses/Error"}
    if "$ref" in spec:
        spec = doc["components"]["responses"][spec["$ref"].rsplit("/", 1)[1]]
    body_schema = {**spec["content"]["application/json"]["schema"], "components": doc["components"]}
    validator = Draft202012Validator(body_schema, format_checker=FormatChecker())
    errors = list(validator.iter_errors(body))
    assert not errors, f"{method} {path} -> {response.status_code}: {errors[0].message} in {body}"


class ApiClient:
    """The Flask test client speaking to /api/v1 with a key; every answer is contract-checked."""

    def __init__(self, client, secret: str | None):
        self.client = client
        self.secret = secret

    def request(self, method: str, path: str, body=None, *, headers=None, raw=None):
        all_headers = {}
        if self.secret is not None:
            all_headers["Authorization"] = f"Bearer {self.secret}"
        all_headers.update(headers or {})
        kwargs = {"headers": all_headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        response = self.client.open("/api/v1" + path, method=method, **kwargs)
        check_response(method, "/api/v1" + path, response)
        return response

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body, **kw)


def order_row(reference: str) -> Order:
    with db.reader() as session:
        return session.scalar(select(Order).where(Order.reference == reference))


def queued(kind: str) -> list[Job]:
    with db.reader() as session:
        return list(
            session.scalars(
                select(Job).where(Job.kind == kind, Job.state == JobState.QUEUED).order_by(Job.id)
            )
        )


def run_queued(app, kind: str) -> int:
    """Run every queued job of one kind now (what the worker would do); returns how many."""
    services = app.extensions["portal"]
    ran = 0
    for job in queued(kind):
        jobs.run_inline(services, job.dedupe_key, 10)
        ran += 1
    return ran


def deliveries(event_type: str | None = None) -> list[WebhookDelivery]:
    with db.reader() as session:
        query = select(WebhookDelivery).order_by(WebhookDelivery.id)
        if event_type:
            query = query.where(WebhookDelivery.event_type == event_type)
        return list(session.scalars(query))


def authorise(app, mocked, reference: str, *, manual: bool, stripe_base: str) -> Order:
    """The customer paid on Stripe (the return page or the webhook found out): record it and
    let the fulfilment job tell the merchant."""
    services = app.extensions["portal"]
    order = order_row(reference)
    intent = f"pi_{reference[-8:]}"
    stripe_session = {
        "id": f"cs_test_{reference[-8:]}",
        "object": "checkout.session",
        "status": "complete",
        "payment_status": "unpaid" if manual else "paid",
        "amount_total": order.amount_minor,
        "currency": order.currency.lower(),
        "client_reference_id": reference,
        "metadata": {"order_reference": reference},
        "payment_intent": intent,
        "total_details": {"amount_tax": 0},
    }
    if manual:
        mocked.get(
            f"{stripe_base}/v1/payment_intents/{intent}",
            json={"id": intent, "object": "payment_intent", "status": "requires_capture"},
        )
    checkout.sync_session(services, stripe_session, source="test")
    jobs.run_inline(services, f"fulfil:{order.id}", 10)
    return order_row(reference)


# --- a sample receiver: what a merchant writes (the README shows the same) ------------------------


def verify_signature(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(",") if "=" in item)
    timestamp = int(fields.get("t", "0"))
    if abs(time.time() - timestamp) > tolerance:
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class SampleReceiver:
    """A merchant's webhook endpoint on `responses`: it checks each signature, keeps the events
    it accepts, and can be told to fail the next N deliveries."""

    def __init__(self, mocked, secret: str, url: str = HOOK_URL):
        self.secret = secret
        self.events: list[dict] = []
        self.refused = 0
        self.fail_next = 0
        mocked.add_callback("POST", url, callback=self._receive)

    def _receive(self, request):
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        if not verify_signature(self.secret, request.headers.get("Portal-Signature", ""), body):
            self.refused += 1
            return (400, {}, "bad signature")
        if self.fail_next:
            self.fail_next -= 1
            return (500, {}, "busy")
        event = json.loads(body)
        assert request.headers["Portal-Event-Id"] == event["id"]
        assert request.headers["Portal-Event-Type"] == event["type"]
        self.events.append(event)
        return (200, {}, "ok")

    def types(self) -> list[str]:
        return [event["type"] for event in self.events]
