"""Cleeng's webhooks (`POST /webhooks/cleeng`): authenticated by an HMAC-SHA256 signature of the
raw body, each event stored as a job before the 200.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

from flask import jsonify, request

from portal import jobs, jsonlimits
from portal.db import db
from portal.platforms.cleeng.client import SIGNATURE_HEADER, TOPIC_JOBS

log = logging.getLogger("portal.cleeng")


# --- webhook signatures ---------------------------------------------------------------------------


def signature(payload: bytes, secret: str) -> str:
    """Hex HMAC-SHA256 of the raw body: Cleeng's webhook verification (name HMAC, hashAlg
    SHA256, the shared secret configured with the webhook subscription)."""
    return hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()


def signature_valid(payload: bytes, header: str | None, secrets: tuple[str, ...]) -> bool:
    given = (header or "").strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256=") :]
    if not given:
        return False
    given = given.lower()
    return any(hmac.compare_digest(given, signature(payload, secret)) for secret in secrets)


def event_key(event: dict) -> str:
    """Cleeng's events carry no id of their own: a repeat delivery is the same JSON."""
    canonical = json.dumps(event, sort_keys=True, separators=(",", ":"))
    return "cleeng:" + hashlib.sha256(canonical.encode()).hexdigest()


def _refused(status: int, code: str, message: str):
    return jsonify(error={"code": code, "message": message}), status


def webhook():
    """Cleeng's webhooks: the signature first, then each event stored as a job (once) before
    the 200, since Cleeng delivers again until it gets one."""
    from portal.views import services
    from portal.webhooks import DATABASE_UNAVAILABLE

    settings = services().settings
    secrets = settings.cleeng_webhook_secret
    if not secrets:
        log.error("Cleeng webhook refused: PORTAL_CLEENG_WEBHOOK_SECRET is not set")
        return _refused(503, "not_configured", "webhooks are not set up")
    payload = request.get_data(cache=False)
    if not signature_valid(payload, request.headers.get(SIGNATURE_HEADER), secrets):
        log.warning("Cleeng webhook refused: missing or bad signature")
        return _refused(401, "bad_signature", "invalid signature")
    try:
        event = jsonlimits.loads(payload)
    except ValueError:
        event = None
    if (
        not isinstance(event, dict)
        or not isinstance(event.get("topic"), str)
        or not isinstance(event.get("data"), dict)
    ):
        return _refused(400, "bad_event", "expected a JSON object with topic and data")
    topic, data = event["topic"], event["data"]
    kind = TOPIC_JOBS.get(topic)
    if kind is None:
        log.info("Cleeng webhook %s ignored: topic not handled", topic)
        return jsonify(received=True, outcome="ignored: topic not handled")
    ours = settings.cleeng_payment_method_id
    method = data.get("paymentMethodId")
    if ours and method is not None and str(method) != ours:
        # Cleeng sends every connector's events unless the subscription filters them.
        return jsonify(received=True, outcome="ignored: another payment method")
    key = event_key(event)
    try:
        duplicate = jobs.job_state(key) is not None
        if not duplicate:
            with db.transaction() as session:
                jobs.enqueue(
                    session,
                    kind,
                    key,
                    payload={
                        "topic": topic,
                        "broadcasterId": event.get("broadcasterId"),
                        "data": data,
                    },
                )
    except DATABASE_UNAVAILABLE:
        log.exception("Cleeng webhook %s: database unavailable", topic)
        return _refused(503, "unavailable", "try again")
    log.info("Cleeng webhook %s queued%s", topic, " (duplicate)" if duplicate else "")
    return jsonify(received=True, duplicate=duplicate, outcome=f"queued: {kind}")
