"""The order timeline: every external call, webhook, state change and job outcome, for operators."""

from __future__ import annotations

import logging

from portal.db import db
from portal.http import CallRecord
from portal.models import OrderEvent

log = logging.getLogger("portal.timeline")


def record(
    order_id: int,
    kind: str,
    message: str,
    detail: dict | None = None,
    duration_ms: int | None = None,
    session=None,
) -> None:
    """Append an event; inside `session` when given (same transaction), else on its own: one
    INSERT, committed as it runs (db.single_writes)."""
    event = OrderEvent(
        order_id=order_id, kind=kind, message=message, detail=detail or {}, duration_ms=duration_ms
    )
    if session is not None:
        session.add(event)
        return
    try:
        with db.single_writes() as own:
            own.add(event)
            own.flush()
    except Exception:  # the timeline must never break a payment path
        log.exception("could not write timeline event", extra={"order_id": order_id})


def record_call(order_id: int, call: CallRecord) -> None:
    outcome = call.status if call.status is not None else call.error
    record(
        order_id,
        "http",
        f"{call.method} {call.url} -> {outcome}",
        {"method": call.method, "url": call.url, "status": call.status, "error": call.error},
        call.duration_ms,
    )
