"""Cleeng's job kinds: the webhook's events, run by the worker (`renewals`); an event that cannot
be handled raises an operator alert.
"""

from __future__ import annotations

import logging

from sqlalchemy import select

from portal import outbound
from portal.db import db
from portal.platforms.cleeng.client import PLATFORM
from portal.platforms.cleeng.models import CleengPayment
from portal.platforms.cleeng.platform import CleengPlatform

log = logging.getLogger("portal.cleeng")


def _platform(services) -> CleengPlatform:
    return services.platform(PLATFORM)


def run_renewal(services, job) -> None:
    outcome = _platform(services).renew(
        job.payload["data"], job.dedupe_key, job.payload.get("topic")
    )
    log.info("Cleeng %s: %s", job.payload.get("topic"), outcome)


def run_refund(services, job) -> None:
    outcome = _platform(services).refund_payment(job.payload["data"], job.dedupe_key)
    log.info("Cleeng refundPayment: %s", outcome)


def run_detach(services, job) -> None:
    outcome = _platform(services).deactivate_payment_details(job.payload["data"])
    log.info("Cleeng paymentDetailsDeactivated: %s", outcome)


def give_up_event(services, job, error: str) -> None:
    """A Cleeng event could not be handled: an operator must look (money may have moved)."""
    data = job.payload.get("data") or {}
    with db.reader() as session:
        attempt = session.scalar(
            select(CleengPayment).where(CleengPayment.event_key == job.dedupe_key)
        )
    charged = attempt.stripe_payment_intent_id if attempt is not None else None
    message = (
        f"Cleeng {job.payload.get('topic')} (subscription {data.get('subscriptionId')}, payment "
        f"{data.get('paymentId')}) failed after {job.attempts} attempts: {error}"
        + (f"; Stripe payment {charged} is not reported to Cleeng" if charged else "")
    )
    log.error("ALERT %s", message)
    url = services.settings.alert_webhook_url
    if url:
        try:
            outbound.post(
                services.settings,
                url,
                json={"text": f"Checkout portal: {message}", "platform": PLATFORM},
                timeout=(3.05, 10),
            )
        except Exception:  # noqa: BLE001 - the log line above already carries the alert
            log.exception("alert webhook failed")
