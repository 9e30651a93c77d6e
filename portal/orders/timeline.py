"""The order timeline: every external call, webhook, state change and job outcome, for operators.
Part of the order store: `portal.orders.move` writes the state events; everything else appends
its own with `record`."""

from __future__ import annotations

import logging

from portal.db import db
from portal.models import OrderEvent, utcnow

log = logging.getLogger("portal.timeline")
_EVENTS = OrderEvent.__table__
_INSERT = _EVENTS.insert()


def event(
    order_id: int | None,
    kind: str,
    message: str,
    detail: dict | None = None,
    duration_ms: int | None = None,
) -> dict:
    """One event's column values, stamped now."""
    return {
        "order_id": order_id,
        "kind": kind,
        "message": message,
        "detail": detail or {},
        "duration_ms": duration_ms,
        "created_at": utcnow(),
    }


def call_event(order_id: int | None, call) -> dict:
    """An external call's event; `call` is a `portal.http.CallRecord` (not imported: the store
    sits below the HTTP clients)."""
    outcome = call.status if call.status is not None else call.error
    return event(
        order_id,
        "http",
        f"{call.method} {call.url} -> {outcome}",
        {"method": call.method, "url": call.url, "status": call.status, "error": call.error},
        call.duration_ms,
    )


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
    write(event(order_id, kind, message, detail, duration_ms), session)


def record_call(order_id: int, call) -> None:
    """An external call's event, on its own (a call that rides with a state change goes in
    `portal.orders.move`'s `before`)."""
    write(call_event(order_id, call))


def write(values: dict, session=None) -> None:
    """Append one event made by `event` or `call_event`; `session` as for `record`."""
    if session is not None:
        session.execute(_INSERT, values)
        return
    try:
        with db.statements() as connection:
            connection.execute(_INSERT, values)
    except Exception:  # the timeline must never break a payment path
        log.exception("could not write timeline event", extra={"order_id": values["order_id"]})
