"""Every read, write and lock of an order row (see the package docstring for the public face).

One code path for SQLite and PostgreSQL: SQLAlchemy Core statements (`INSERT/UPDATE …
RETURNING`), each read answered as a new `Order` made from the row's columns with the public
constructor. One speed-up sits behind this seam: on PostgreSQL a write and its timeline events
are one statement (a data-modifying CTE, SQLAlchemy's public `.cte()`), where SQLite, which has
no such CTEs, takes a short transaction of two. It is worth a fifth of the handoff rate
(docs/performance.md); both paths meet the same tests (tests/test_order_store_writes.py).

Such an `Order` belongs to no session, so it is never shared between threads or requests; a
caller that wants the row as it is now asks again (`refresh`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from sqlalchemy import bindparam, insert, select
from sqlalchemy import update as update_statement

from portal.db import db
from portal.models import Order, utcnow
from portal.orders import cache, timeline
from portal.orders.states import LEARNER_ORDER_STATES, MOVES

_ORDERS = Order.__table__
_COLUMNS = tuple(_ORDERS.c)


class NotFound(LookupError):
    """No order has this reference (learner pages answer with the branded 404)."""


class UnknownEvent(KeyError):
    """`move` was asked for an event the state machine (`states.MOVES`) does not declare."""


# Built once: the entry pages, Pay and the job runners each run one of these.
_BY_REFERENCE = select(*_COLUMNS).where(_ORDERS.c.reference == bindparam("reference"))
_BY_ID = select(*_COLUMNS).where(_ORDERS.c.id == bindparam("order_id"))
_BY_PLATFORM_REF = select(*_COLUMNS).where(
    _ORDERS.c.platform == bindparam("platform"), _ORDERS.c.platform_ref == bindparam("platform_ref")
)
_BY_LEARNER_KEY = (
    select(*_COLUMNS)
    .where(
        _ORDERS.c.platform == bindparam("platform"),
        _ORDERS.c.learner_key == bindparam("learner_key"),
        _ORDERS.c.state.in_(LEARNER_ORDER_STATES),
    )
    .order_by(_ORDERS.c.id.desc())
    .limit(1)
)
_BY_SESSION = select(*_COLUMNS).where(_ORDERS.c.stripe_session_id == bindparam("session_id"))
_BY_PAYMENT_INTENT = select(*_COLUMNS).where(
    _ORDERS.c.stripe_payment_intent_id == bindparam("payment_intent")
)
_INSERT = insert(_ORDERS).returning(*_COLUMNS)
# PostgreSQL's one-statement writes, built once per shape (`_one_statement`).
_CREATES: dict = {}
_MOVES: dict = {}


def _order(row: Mapping | None) -> Order | None:
    return Order(**row) if row is not None else None


def _first(statement, params: dict) -> Order | None:
    with db.statements() as connection:
        return _order(connection.execute(statement, params).mappings().first())


def _one_statement(session) -> bool:
    """Whether this write goes as one statement: on PostgreSQL, in the caller's transaction or
    on its own (autocommit: the one statement is atomic)."""
    if session is None:
        return db.is_postgres
    dialect = getattr(session, "dialect", None)  # a Core connection has one; a session a bind
    return (dialect or session.get_bind().dialect).name == "postgresql"


@contextmanager
def _writing(session, *, one_statement: bool = False) -> Iterator:
    """The caller's transaction (an ORM session or a Core connection), else one of our own
    that commits at the end of the block. A write of `one_statement` is atomic on its own:
    on PostgreSQL it commits as it runs (`db.statements`), without BEGIN and COMMIT."""
    if session is not None:
        yield session
    elif one_statement:
        with db.statements() as connection:
            yield connection
    else:
        with db.engine.begin() as connection:
            yield connection


# --- reads ----------------------------------------------------------------------------------------


def get(reference: str) -> Order:
    """The order with this reference, read now; raises `NotFound`."""
    order = _first(_BY_REFERENCE, {"reference": reference})
    if order is None:
        raise NotFound(reference)
    return order


def by_id(order_id: int) -> Order | None:
    """The order with this id (a job's, an audit entry's), read now; None if it is gone."""
    return _first(_BY_ID, {"order_id": order_id})


def refresh(order: Order) -> Order:
    """The same order as it is now (another request or worker may have moved it)."""
    return by_id(order.id)


def find(platform: str, platform_ref: str) -> Order | None:
    """The order of a platform's purchase, or None (every entry page asks; for a new purchase
    the answer is None)."""
    return _first(_BY_PLATFORM_REF, {"platform": platform, "platform_ref": platform_ref})


def find_for_learner(platform: str, learner_key: str) -> Order | None:
    """The learner's current order for the same purchase (`states.LEARNER_ORDER_STATES`), for
    platforms that send a new reference with every attempt."""
    return _first(_BY_LEARNER_KEY, {"platform": platform, "learner_key": learner_key})


def find_for_session(stripe_session: Mapping) -> Order | None:
    """The order a Checkout Session (or an event's copy of one) belongs to; None if not ours."""
    reference = stripe_session.get("client_reference_id") or (
        stripe_session.get("metadata") or {}
    ).get("order_reference")
    order = _first(_BY_REFERENCE, {"reference": reference}) if reference else None
    if order is None:
        order = _first(_BY_SESSION, {"session_id": stripe_session["id"]})
    return order


def find_for_payment_intent(payment_intent: str) -> Order | None:
    """The order a PaymentIntent paid (refund and dispute events name only that)."""
    return _first(_BY_PAYMENT_INTENT, {"payment_intent": payment_intent})


def where(*conditions, order_by=None, limit: int | None = None) -> list[Order]:
    """The orders that meet `conditions` (expressions on `Order`'s columns), for the jobs that
    sweep many: each a new `Order` of the caller's own."""
    statement = select(*_COLUMNS).where(*conditions)
    if order_by is not None:
        statement = statement.order_by(order_by)
    if limit is not None:
        statement = statement.limit(limit)
    with db.statements() as connection:
        return [Order(**row) for row in connection.execute(statement).mappings()]


def view(reference: str) -> Order:
    """The order for a learner page that only shows it (the review page). On PostgreSQL it may
    come from this process's kept orders (`portal.orders.cache`) while its row has not changed;
    its `row_version` (None on SQLite) names the row as it was read, for the page cache
    (portal.branding.render). A new `Order` on each call. Raises `NotFound`."""
    kept = cache.kept_orders()
    if kept is None:
        order = get(reference)
        order.row_version = None
        return order
    columns = cache.read_columns(kept, reference)
    if columns is None:
        raise NotFound(reference)
    order = Order(**{name: value for name, value in columns.items() if name != "row_version"})
    order.row_version = columns["row_version"]
    return order


# --- writes ---------------------------------------------------------------------------------------


def create(values: dict, *, session=None, message: str = "order opened", detail=None) -> Order:
    """A new order from its column values (reference, state and timestamps take their
    defaults), with its first timeline event (`message`, `detail`), committed together (or with
    `session`'s transaction); the order as stored. Raises `IntegrityError` when the purchase (or
    the learner's open order) exists already."""
    opened = timeline.event(None, "state", message, detail or {"to": "open"})
    if _one_statement(session):
        names = tuple(values)
        statement = _CREATES.get(names)
        if statement is None:
            inserted = (
                insert(_ORDERS)
                .values({name: bindparam(f"o_{name}") for name in names})
                .returning(*_COLUMNS)
                .cte("opened")
            )
            statement = _CREATES[names] = select(inserted).add_cte(
                timeline.logged_with(inserted, 0, 1)
            )
        params = {f"o_{name}": value for name, value in values.items()}
        params.update(timeline.bind_events("a", [opened]))
        with _writing(session, one_statement=True) as connection:
            return Order(**connection.execute(statement, params).mappings().one())
    with _writing(session) as connection:
        row = connection.execute(_INSERT, values).mappings().one()
        timeline.write({**opened, "order_id": row["id"]}, connection)
    return Order(**row)


def move(order: Order, event: str, *, session=None, where=None, before=(), **values):
    """The compare-and-set: `event` moves the order to its next state (`states.MOVES`) only if
    it is still in one of the event's start states (and `where`, an extra condition, holds),
    setting `values` with it. Returns the order as this move left it, or None when the row was
    no longer in a start state (someone else moved it first: only the winner acts on it).

    `session`: the caller's transaction (ORM session or Core connection), for work that must
    commit with the move; else the move commits on its own. `before`: timeline events
    (`timeline.event`, `timeline.call_event`) that led here, such as the call whose answer is
    being stored, written whatever the outcome, ahead of the state event."""
    step = MOVES.get(event)
    if step is None:
        raise UnknownEvent(event)
    moved = timeline.event(
        order.id,
        "state",
        f"-> {step.to}",
        {"from": sorted(str(state) for state in step.sources), "to": str(step.to)},
    )
    if _one_statement(session):
        params = {
            "order_id": order.id,
            "now": moved["created_at"],
            **{f"set_{name}": value for name, value in values.items()},
            **timeline.bind_events("b", list(before)),
            **timeline.bind_events("a", [moved]),
        }
        statement = _move_statement(step, tuple(values), len(before), where)
        with _writing(session, one_statement=True) as connection:
            return _order(connection.execute(statement, params).mappings().first())
    conditions = [_ORDERS.c.id == order.id, _ORDERS.c.state.in_(step.sources)]
    if where is not None:
        conditions.append(where)
    statement = (
        update_statement(_ORDERS)
        .where(*conditions)
        .values(state=step.to, updated_at=moved["created_at"], **values)
        .returning(*_COLUMNS)
    )
    with _writing(session) as connection:
        for earlier in before:
            timeline.write(earlier, connection)
        row = connection.execute(statement).mappings().first()
        if row is None:
            return None
        timeline.write(moved, connection)
    return Order(**row)


def _move_statement(step, names: tuple, before: int, where):
    """PostgreSQL: the compare-and-set UPDATE … RETURNING and its timeline events in one
    statement; it answers the moved row, or none. Built once per shape (a statement with an
    extra `where` is built each time; SQLAlchemy's compiled cache still serves its SQL)."""
    key = (step, names, before)
    statement = _MOVES.get(key) if where is None else None
    if statement is None:
        conditions = [_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.state.in_(step.sources)]
        if where is not None:
            conditions.append(where)
        changed = (
            update_statement(_ORDERS)
            .where(*conditions)
            .values(
                state=step.to,
                updated_at=bindparam("now"),
                **{name: bindparam(f"set_{name}") for name in names},
            )
            .returning(*_COLUMNS)
            .cte("changed")
        )
        statement = select(changed).add_cte(timeline.logged_with(changed, before, 1))
        if where is None:
            _MOVES[key] = statement
    return statement


def update(order: Order, *, session=None, where=None, expect=None, **values) -> Order | None:
    """Set columns that are not the state (an open order's new price, a redirect, a capture):
    the order as written, or None when the guard no longer held. `expect`: the columns the row
    must still have (`{"session_attempt": 3}`, a compare-and-set); `where`: any other condition
    (an expression on `Order`'s columns)."""
    values = {"updated_at": utcnow(), **values}
    params = {"order_id": order.id, **{f"set_{name}": value for name, value in values.items()}}
    expect = expect or {}
    params.update({f"expect_{name}": value for name, value in expect.items()})
    statement = _update_statement(tuple(values), tuple(expect), where)
    with _writing(session, one_statement=True) as connection:
        return _order(connection.execute(statement, params).mappings().first())


_UPDATES: dict = {}


def _update_statement(names: tuple, expected: tuple, where):
    """An UPDATE … RETURNING of these columns, guarded by `expected` columns' values: built once
    per shape (with an extra `where`, each time)."""
    key = (names, expected)
    statement = _UPDATES.get(key) if where is None else None
    if statement is None:
        conditions = [_ORDERS.c.id == bindparam("order_id")]
        conditions += [_ORDERS.c[name] == bindparam(f"expect_{name}") for name in expected]
        if where is not None:
            conditions.append(where)
        statement = (
            update_statement(_ORDERS)
            .where(*conditions)
            .values({name: bindparam(f"set_{name}") for name in names})
            .returning(*_COLUMNS)
        )
        if where is None:
            _UPDATES[key] = statement
    return statement


def lock(session, order_id: int) -> Order | None:
    """The order, locked until `session`'s transaction ends: every recording of the same
    order's money, whoever makes it, waits for the one before. The lock is taken by a write (an
    UPDATE that changes nothing), which both databases honour: a row lock on PostgreSQL, the
    database's write lock on SQLite (which ignores `FOR UPDATE`)."""
    row = (
        session.execute(
            update_statement(_ORDERS)
            .where(_ORDERS.c.id == order_id)
            .values(updated_at=_ORDERS.c.updated_at)
            .returning(*_COLUMNS)
        )
        .mappings()
        .first()
    )
    return _order(row)
