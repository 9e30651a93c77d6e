"""The order timeline: every external call, webhook, state change and job outcome, for operators.
Part of the order store: `portal.orders.move` writes the state events; everything else appends
its own with `record`."""

from __future__ import annotations

import logging

from sqlalchemy import Integer, bindparam, insert, literal, select, union_all

from portal.db import db
from portal.models import OrderEvent, utcnow

log = logging.getLogger("portal.timeline")
_EVENTS = OrderEvent.__table__
_INSERT = _EVENTS.insert()
_COLUMNS = ("order_id", "kind", "message", "detail", "duration_ms", "created_at")


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


# --- PostgreSQL: events riding in the statement of the change they tell of ------------------------


def logged_with(changed, before: int, after: int):
    """The INSERT of timeline events as a data-modifying CTE (PostgreSQL), to ride in the same
    statement as the change it tells of: one round trip and one commit, not four.

    `changed` is a data-modifying CTE returning the changed order's `id` (no row when the change
    did not happen). The `before` events (parameters `b0_kind`, `b0_message`, ..., each with its
    own `b0_order_id`) are written whatever the outcome, like the call that led to the change;
    the `after` events (`a0_kind`, ...) only for a row `changed` returns, with its id. Ids follow
    that order, so the timeline reads as it happened. `bind_events` makes the parameters."""
    parts = [_event_select(f"b{i}_", i) for i in range(before)]
    parts += [_event_select(f"a{i}_", before + i, changed) for i in range(after)]
    rows = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery("logged_rows")
    return (
        insert(_EVENTS)
        .from_select(_COLUMNS, select(*(rows.c[name] for name in _COLUMNS)).order_by(rows.c.n))
        .cte("logged")
    )


def bind_events(prefix: str, events: list[dict]) -> dict:
    """The parameters of `logged_with` for `events` (dicts from `event`): prefix "b" or "a"."""
    params = {}
    for i, values in enumerate(events):
        for name, value in values.items():
            if prefix == "b" or name != "order_id":
                params[f"{prefix}{i}_{name}"] = value
    return params


def _event_select(prefix: str, n: int, changed=None):
    columns = _EVENTS.c
    order_id = (
        changed.c.id.label("order_id")
        if changed is not None
        else bindparam(f"{prefix}order_id", type_=columns.order_id.type).label("order_id")
    )
    query = select(
        literal(n, Integer).label("n"),
        order_id,
        *(
            bindparam(f"{prefix}{name}", type_=columns[name].type).label(name)
            for name in _COLUMNS[1:]
        ),
    )
    return query.select_from(changed) if changed is not None else query
