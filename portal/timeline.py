"""The order timeline: every external call, webhook, state change and job outcome, for operators."""

from __future__ import annotations

import logging

from portal.db import db
from portal.http import CallRecord
from portal.models import OrderEvent, utcnow

log = logging.getLogger("portal.timeline")
_INSERT = OrderEvent.__table__.insert()


def record(
    order_id: int,
    kind: str,
    message: str,
    detail: dict | None = None,
    duration_ms: int | None = None,
    session=None,
) -> None:
    """Append an event: inside `session` when given (sent at once, committed with the rest of
    its transaction), else on its own, one INSERT committed as it runs (db.statements). A
    Core INSERT: nothing reads the event back, so the ORM's unit of work would be pure cost."""
    values = {
        "order_id": order_id,
        "kind": kind,
        "message": message,
        "detail": detail or {},
        "duration_ms": duration_ms,
        "created_at": utcnow(),
    }
    if session is not None:
        session.execute(_INSERT, values)
        return
    try:
        with db.statements() as connection:
            connection.execute(_INSERT, values)
    except Exception:  # the timeline must never break a payment path
        log.exception("could not write timeline event", extra={"order_id": order_id})


def record_call(order_id: int, call: CallRecord, session=None) -> None:
    """An external call's event; `session` as for `record`."""
    outcome = call.status if call.status is not None else call.error
    record(
        order_id,
        "http",
        f"{call.method} {call.url} -> {outcome}",
        {"method": call.method, "url": call.url, "status": call.status, "error": call.error},
        call.duration_ms,
        session=session,
    )
