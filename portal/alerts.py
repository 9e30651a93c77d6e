"""Operator alerts.

- About money (`raise_alert`): a dispute opened or lost, an amount charged that differs from the
  order, a refund a platform could not take. Each one is an ERROR log line, an "alert" event on
  the order's timeline (the console's attention list reads these) and a durable `operator_alert`
  job that POSTs the alert to `PORTAL_ALERT_WEBHOOK_URL`, retried like any other job, so an alert
  raised while the chat tool is down still arrives. These are raised inside the caller's
  transaction: an alert exists iff what it tells of committed.
- An order that needs an operator (`alert`): a platform that never took a fulfilment, an email
  that could not be delivered. An ERROR log line, the timeline, and one try at the alert webhook.
"""

from __future__ import annotations

import logging

from portal import jobs, outbound
from portal.db import db
from portal.http import UpstreamError
from portal.models import Order
from portal.orders import timeline

log = logging.getLogger("portal.alerts")

# The kinds operators are alerted about (the attention list and the webhook body name them).
KINDS = {
    "dispute_opened": "Dispute opened",
    "dispute_lost": "Dispute lost",
    "amount_mismatch": "Amount charged differs from the order",
    "refund_not_taken": "Refund the platform could not take",
}


def raise_alert(session, order: Order, kind: str, message: str, *, key: str, detail=None) -> None:
    """Record and queue one alert, in `session`. `key` names the happening (a dispute id, a refund
    id): raising the same alert twice sends it once."""
    if kind not in KINDS:
        raise ValueError(f"unknown alert kind {kind}")
    detail = {"alert": kind, **(detail or {})}
    log.error("ALERT order %s: %s", order.reference, message, extra={"order_id": order.id})
    timeline.record(order.id, "alert", message, detail, session=session)
    jobs.enqueue(
        session,
        "operator_alert",
        f"alert:{kind}:{key}"[:190],
        order_id=order.id,
        payload={"kind": kind, "message": message, "detail": detail},
    )


def alert(services, order: Order, message: str) -> None:
    """An operator must act: an ERROR log line with the order reference, the timeline, and the
    optional alert webhook."""
    log.error("ALERT order %s: %s", order.reference, message, extra={"order_id": order.id})
    timeline.record(order.id, "alert", message)
    url = services.settings.alert_webhook_url
    if url:
        try:
            outbound.post(
                services.settings,
                url,
                json={
                    "text": f"Checkout portal: order {order.reference} ({order.platform} "
                    f"{order.platform_ref}) needs attention: {message}",
                    "kind": "needs_attention",
                    "order": order.reference,
                    "platform": order.platform,
                    "platform_ref": order.platform_ref,
                    "state": str(order.state),
                },
                timeout=(3.05, 10),
            )
        except Exception:  # noqa: BLE001 - the log line above already carries the alert
            log.exception("alert webhook failed", extra={"order_id": order.id})


def body(order: Order, kind: str, message: str, detail: dict) -> dict:
    return {
        "text": f"Checkout portal: order {order.reference} ({order.platform} "
        f"{order.platform_ref}) needs attention: {KINDS[kind]}: {message}",
        "kind": kind,
        "order": order.reference,
        "platform": order.platform,
        "platform_ref": order.platform_ref,
        "state": str(order.state),
        "detail": detail,
    }


def run_operator_alert(services, job) -> None:
    url = services.settings.alert_webhook_url
    if not url:
        return  # the log line and the timeline carry it
    with db.reader() as session:
        order = session.get(Order, job.order_id)
    if order is None:
        return
    payload = job.payload
    try:
        response = outbound.post(
            services.settings,
            url,
            json=body(order, payload["kind"], payload["message"], payload.get("detail") or {}),
            timeout=(3.05, 10),
        )
    except outbound.BlockedDestination as exc:
        # A loopback, private or metadata address: refused now, refused on every retry.
        raise jobs.PermanentJobError(f"alert webhook refused: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any failure to reach the hook is worth a retry
        raise UpstreamError(f"alert webhook unreachable: {exc}", transient=True) from exc
    if response.status_code >= 300:
        raise UpstreamError(
            f"alert webhook answered HTTP {response.status_code}",
            transient=response.status_code >= 500 or response.status_code == 429,
        )


def give_up_alert(services, job, error: str) -> None:
    log.error("alert %s for order %s could not be sent: %s", job.dedupe_key, job.order_id, error)
