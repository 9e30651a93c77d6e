"""The checkout core: orders, their state machine, the hand-off to Stripe, and fulfil-once.

Rules this module keeps:
- amounts come from a platform (an `OrderDraft`) or the database, never from a browser;
- every state change is a compare-and-set `UPDATE ... WHERE state IN (...)`;
- no outbound HTTP happens while a database transaction is open;
- `sync_session` is the one place a Stripe Checkout Session becomes a payment. The return page,
  the webhook, the expiry sweep and reconciliation all call it, and only the winner of the
  `-> paid` compare-and-set queues the fulfilment job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from types import MappingProxyType

from cachetools import TTLCache
from flask import current_app, has_app_context
from sqlalchemy import bindparam, func, insert, literal_column, select, update
from sqlalchemy.exc import IntegrityError

from portal import alerts, jobs, receipts, recovery, timeline
from portal.config import Settings
from portal.db import db
from portal.http import UpstreamError
from portal.i18n import N_
from portal.models import PAID_STATES, Order, OrderState, utcnow
from portal.money import normalise_currency, percent_of
from portal.stripe_gateway import CheckoutRequest

log = logging.getLogger("portal.checkout")
_ORDERS = Order.__table__

# A prepared attempt must leave Stripe this long (its minimum is 30 minutes) before it expires.
MIN_SESSION_LIFETIME = timedelta(minutes=31)


class CheckoutError(Exception):
    """A problem the learner must be told about; views render it as a branded page."""

    def __init__(self, status: int, title: str, message: str, *, back_url: str | None = None):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.back_url = back_url


@dataclass
class OrderDraft:
    """Authoritative purchase data, as a platform reported it."""

    platform: str
    platform_ref: str
    description: str
    currency: str
    amount_minor: int
    quantity: int = 1
    sku: str | None = None
    list_unit_minor: int | None = None
    promo_code: str | None = None
    customer_email: str | None = None
    customer_name: str | None = None
    locale: str | None = None
    redirect_url: str | None = None
    platform_data: dict = field(default_factory=dict)
    # For platforms whose reference is new on every attempt: the learner and what they buy
    # (Order.learner_key). An order still payable or already paid for it is used again.
    learner_key: str | None = None


@dataclass
class Next:
    """Where a view sends the learner: an external URL, or one of our pages."""

    redirect_url: str | None = None
    page: str | None = None  # "status" | "review" | "cancelled"
    order: Order | None = None


# Built once: every page of an order and every entry runs one of these.
_ROW_BY_PLATFORM_REF = select(*_ORDERS.c).where(
    _ORDERS.c.platform == bindparam("platform"), _ORDERS.c.platform_ref == bindparam("platform_ref")
)
_BY_REFERENCE = select(Order).where(Order.reference == bindparam("reference"))


# The states in which an order answers for its learner and purchase: a new attempt shows it
# (to pay it, or to see that it is paid) instead of opening another. Cancelled, failed and
# refunded orders are over: a new attempt is a new purchase.
LEARNER_ORDER_STATES = (
    OrderState.OPEN,
    OrderState.PAYING,
    OrderState.EXPIRED,
    OrderState.PROCESSING,
    OrderState.PAID,
    OrderState.FULFILLED,
    OrderState.FULFIL_FAILED,
)
_BY_LEARNER_KEY = (
    select(Order)
    .where(
        Order.platform == bindparam("platform"),
        Order.learner_key == bindparam("learner_key"),
        Order.state.in_(LEARNER_ORDER_STATES),
    )
    .order_by(Order.id.desc())
    .limit(1)
)


def find_learner_order(platform: str, learner_key: str) -> Order | None:
    with db.reader() as session:
        return session.scalar(_BY_LEARNER_KEY, {"platform": platform, "learner_key": learner_key})


def order_from_columns(columns: Mapping) -> Order:
    """A new `Order` (never added to a session) from a mapping of all its columns: a Core
    row's `.mappings()`, or the review page's kept columns. Where a path has a Core row at hand
    (an entry's look-up, an `INSERT … RETURNING`, Pay's compare-and-set), this is half what
    loading it through an ORM session costs."""
    return Order(**columns)


def find_order(platform: str, platform_ref: str) -> Order | None:
    """The order of a platform's purchase, or None (every entry page asks; for a new purchase
    the answer is None): one Core SELECT."""
    with db.statements() as connection:
        row = (
            connection.execute(
                _ROW_BY_PLATFORM_REF, {"platform": platform, "platform_ref": platform_ref}
            )
            .mappings()
            .first()
        )
    return order_from_columns(row) if row is not None else None


def order_not_found() -> CheckoutError:
    return CheckoutError(404, N_("Order not found"), N_("We could not find this order."))


def load_order(reference: str) -> Order:
    with db.reader() as session:
        order = session.scalar(_BY_REFERENCE, {"reference": reference})
    if order is None:
        raise order_not_found()
    return order


# --- the pages of an order, read while the row has not changed -----------------------------------
#
# Learners reload the review page, come back to it from Stripe, keep it open in a tab. On
# PostgreSQL each process keeps the columns of the orders it showed last, each with its row
# version (`xmin`, the transaction that wrote the row as it is now: any UPDATE, from any process,
# host or psql prompt, gives the row a new one).
#
# - While the process's order change listener is live (portal.order_changes: a trigger NOTIFYs
#   every change to an order as it commits), a kept order is shown again without asking the
#   database at all; the notification of a change drops it.
# - Otherwise (the listener is connecting, reconnecting, cannot hear, or is switched off), a page
#   asks only for the row's version, a one-column index look-up, and reads the row again when it
#   differs.
#
# What is kept is an immutable mapping of the columns; every page gets an `Order` of its own made
# from it, so no object is shared between requests. On SQLite, which has neither, every page
# reads the row.

KEPT_ORDERS_EXTENSION = "portal.kept_orders"
_VERSION_BY_REFERENCE = select(literal_column("xmin::text")).where(
    Order.reference == bindparam("reference")
)
_ROW_WITH_VERSION = select(
    *_ORDERS.c, literal_column("orders.xmin::text").label("row_version")
).where(_ORDERS.c.reference == bindparam("reference"))


class KeptOrders:
    """The last `size` orders shown by this process (a cachetools TTLCache behind a lock), by
    reference: each one's columns, with its row version.

    Without a live listener an entry is only used for the version it was read with (`get`);
    `max_age` bounds it anyway (a transaction id comes round again after ~4 billion). With one,
    an entry read after the listener went live and with no change heard for its order since the
    read began is `trusted`: used without asking, for at most `trusted_for` seconds, until the
    listener hears of a change, or until it stops being live.
    """

    CHANGES_REMEMBERED = 4096

    def __init__(self, size: int = 256, max_age: float = 600.0, trusted_for: float = 60.0):
        self.trusted_for = trusted_for
        self.live = False
        self.listener = None  # the ChangeListener this is subscribed to, once it is
        self._orders = TTLCache(size, ttl=max_age, timer=lambda: time.monotonic())
        self._lock = threading.Lock()
        self._sequence = 0  # counts what the listener heard: changes, and resets
        self._changed_at: dict[str, int] = {}  # reference -> sequence of its last change
        self._floor = 0  # a read that began before this may have missed a change

    # --- what the listener tells (portal.order_changes) ----------------------------------------

    def changed(self, reference: str) -> None:
        with self._lock:
            self._sequence += 1
            if len(self._changed_at) >= self.CHANGES_REMEMBERED:
                self._changed_at.clear()
                self._floor = self._sequence
            self._changed_at[reference] = self._sequence
            self._orders.pop(reference, None)

    def reset(self, live: bool) -> None:
        with self._lock:
            self._sequence += 1
            self._floor = self._sequence
            self._changed_at.clear()
            self.live = live
            self._orders.clear()

    # --- what pages ask ---------------------------------------------------------------------------

    def mark(self) -> int | None:
        """Taken before reading an order: what `put` needs to know whether a change may have
        been missed during the read. None while the listener is not live."""
        return self._sequence if self.live else None

    def trusted(self, reference: str) -> Mapping | None:
        """The kept columns, if the listener is live and has heard of no change since they
        were read."""
        if not self.live:
            return None
        with self._lock:
            entry = self._orders.get(reference)
        if entry is None:
            return None
        _version, kept_at, columns, trusted = entry
        if not trusted or time.monotonic() - kept_at > self.trusted_for:
            return None
        return columns

    def get(self, reference: str, version: str) -> Mapping | None:
        """The kept columns, if they are of row version `version`."""
        with self._lock:
            entry = self._orders.get(reference)
            if entry is not None and entry[0] != version:
                del self._orders[reference]
                entry = None
        return entry[2] if entry is not None else None

    def put(self, reference: str, version: str, columns: Mapping, mark: int | None = None) -> None:
        with self._lock:
            trusted = (
                mark is not None
                and self.live
                and mark >= self._floor
                and self._changed_at.get(reference, 0) <= mark
            )
            self._orders[reference] = (version, time.monotonic(), columns, trusted)

    def __len__(self) -> int:
        return len(self._orders)


def init_app(app) -> None:
    app.extensions[KEPT_ORDERS_EXTENSION] = KeptOrders()


def view_order(reference: str) -> Order:
    """The order for a learner page that only shows it (the review page): a new `Order` on each
    call, made from the kept columns while its row has not changed. Its `row_version` (None on
    SQLite) names the row as it was read, for the page cache (portal.branding.render)."""
    kept = current_app.extensions.get(KEPT_ORDERS_EXTENSION) if has_app_context() else None
    if kept is None or not db.is_postgres:
        order = load_order(reference)
        order.row_version = None
        return order
    if kept.listener is None and current_app.config["PORTAL"].order_change_listener:
        kept.listener = db.order_changes()
        kept.listener.subscribe(kept)
    columns = kept.trusted(reference)
    if columns is None:
        columns = _read_columns(kept, reference)
    order = order_from_columns({k: v for k, v in columns.items() if k != "row_version"})
    order.row_version = columns["row_version"]
    return order


def _read_columns(kept: KeptOrders, reference: str) -> Mapping:
    """The order's columns and `row_version`: the kept ones if its row has not changed since
    they were read, else read afresh and kept."""
    mark = kept.mark()
    with db.statements() as connection:
        if mark is None:
            version = connection.execute(_VERSION_BY_REFERENCE, {"reference": reference}).scalar()
            if version is None:
                raise order_not_found()
            columns = kept.get(reference, version)
            if columns is not None:
                return columns
        row = connection.execute(_ROW_WITH_VERSION, {"reference": reference}).mappings().first()
    if row is None:
        raise order_not_found()
    columns = MappingProxyType(dict(row))
    kept.put(reference, columns["row_version"], columns, mark)
    return columns


def reload(order: Order) -> Order:
    with db.reader() as session:
        return session.get(Order, order.id)


def transition(
    session, order_id: int, expected, new: OrderState, *, where=None, before=(), **values
) -> bool:
    """Compare-and-set: move the order to `new` only if it is still in one of `expected`.
    `session`: an ORM session or a Core connection; a transaction unless, on PostgreSQL, this is
    all it writes (db.statements: the one statement is atomic on its own).
    `before`: timeline events (`timeline.event`, `timeline.call_event`) that led here, such as
    the call whose answer is being stored, written whatever the outcome, ahead of the state
    event. On PostgreSQL all of it is one statement (see `_transition_statement`)."""
    expected = tuple([expected] if isinstance(expected, str) else expected)
    moved = timeline.event(
        order_id, "state", f"-> {new}", {"from": sorted(str(s) for s in expected), "to": str(new)}
    )
    if _dialect_name(session) == "postgresql":
        statement = _transition_statement(expected, new, tuple(values), len(before), where)
        params = {
            "order_id": order_id,
            "now": moved["created_at"],
            **{f"set_{name}": value for name, value in values.items()},
            **timeline.bind_events("b", list(before)),
            **timeline.bind_events("a", [moved]),
        }
        return session.execute(statement, params).scalar_one() == 1
    for event in before:
        timeline.write(event, session)
    conditions = [_ORDERS.c.id == order_id, _ORDERS.c.state.in_(expected)]
    if where is not None:
        conditions.append(where)
    result = session.execute(  # the table, not the ORM entity: no session objects to update
        update(_ORDERS).where(*conditions).values(state=new, updated_at=utcnow(), **values)
    )
    if result.rowcount == 1:
        timeline.write(moved, session)
        return True
    return False


_TRANSITIONS: dict = {}


def _transition_statement(expected: tuple, new: str, names: tuple, before: int, where):
    """PostgreSQL: the compare-and-set UPDATE and its timeline events in one statement, a
    data-modifying CTE (one round trip, not one per event). It answers how many rows changed.
    Built once for each shape (an extra `where` is an expression: that one is built each time,
    and SQLAlchemy's compiled cache still serves its SQL)."""
    key = (expected, new, names, before)
    statement = _TRANSITIONS.get(key) if where is None else None
    if statement is None:
        conditions = [_ORDERS.c.id == bindparam("order_id"), _ORDERS.c.state.in_(expected)]
        if where is not None:
            conditions.append(where)
        changed = (
            update(_ORDERS)
            .where(*conditions)
            .values(
                state=new,
                updated_at=bindparam("now"),
                **{name: bindparam(f"set_{name}") for name in names},
            )
            .returning(_ORDERS.c.id)
            .cte("changed")
        )
        statement = (
            select(func.count())
            .select_from(changed)
            .add_cte(timeline.logged_with(changed, before, 1))
        )
        if where is None:
            _TRANSITIONS[key] = statement
    return statement


def _dialect_name(session) -> str:
    """The database behind an ORM session or a Core connection."""
    dialect = getattr(session, "dialect", None)  # a Core connection has one
    return (dialect or session.get_bind().dialect).name


# --- opening an order -------------------------------------------------------------------------


_UNKNOWN = object()
_INSERT_ORDER = insert(Order.__table__).returning(*Order.__table__.c)
_OPENING: dict = {}


def _insert_order(values: dict) -> Order:
    """The new order, as stored (its reference, defaults and id), with its first timeline event,
    committed together. Core, not the ORM's unit of work. On PostgreSQL one statement: the
    INSERT … RETURNING is a data-modifying CTE and the event is INSERTed from its row."""
    opened = timeline.event(None, "state", "order opened", {"to": "open"})
    with db.statements() as connection:
        if not db.is_postgres:  # a transaction (db.statements): both or neither
            row = connection.execute(_INSERT_ORDER, values).mappings().one()
            timeline.write({**opened, "order_id": row["id"]}, connection)
            return order_from_columns(row)
        names = tuple(values)
        statement = _OPENING.get(names)
        if statement is None:
            inserted = (
                insert(_ORDERS)
                .values({name: bindparam(f"o_{name}") for name in names})
                .returning(*_ORDERS.c)
                .cte("opened")
            )
            statement = select(inserted).add_cte(timeline.logged_with(inserted, 0, 1))
            _OPENING[names] = statement
        params = {f"o_{name}": value for name, value in values.items()}
        row = connection.execute(statement, {**params, **timeline.bind_events("a", [opened])})
        return order_from_columns(row.mappings().one())


def open_order(draft: OrderDraft, existing=_UNKNOWN) -> Order:
    """Create the order for a platform purchase, or return the existing one (refreshed if open).
    `existing`: what find_order just answered for this purchase, when the caller asked."""
    currency = normalise_currency(draft.currency)
    values = {
        "description": draft.description[:500],
        "sku": draft.sku,
        "quantity": draft.quantity,
        "currency": currency,
        "amount_minor": draft.amount_minor,
        "list_unit_minor": draft.list_unit_minor,
        "promo_code": draft.promo_code,
        "customer_email": draft.customer_email,
        "customer_name": draft.customer_name,
        "locale": draft.locale,
        "platform_data": draft.platform_data,
    }
    if draft.redirect_url:
        values["redirect_url"] = draft.redirect_url
    if existing is _UNKNOWN:
        existing = find_order(draft.platform, draft.platform_ref)
    if existing is None and draft.learner_key:
        existing = find_learner_order(draft.platform, draft.learner_key)
    if existing is None:
        try:
            return _insert_order(
                {
                    "platform": draft.platform,
                    "platform_ref": draft.platform_ref,
                    "learner_key": draft.learner_key,
                    **values,
                }
            )
        except IntegrityError:
            # Two first visits raced (the same reference, or the same learner and purchase);
            # the other one created it.
            existing = find_order(draft.platform, draft.platform_ref)
            if existing is None and draft.learner_key:
                existing = find_learner_order(draft.platform, draft.learner_key)
            if existing is None:
                raise
    changed = {k: v for k, v in values.items() if getattr(existing, k) != v}
    if changed and existing.state == OrderState.OPEN:
        money_changed = bool({"amount_minor", "currency"} & changed.keys())
        with db.transaction() as session:
            extra = {"stripe_session_expires_at": None} if money_changed else {}
            session.execute(
                update(Order)
                .where(Order.id == existing.id, Order.state == OrderState.OPEN)
                .values(updated_at=utcnow(), **changed, **extra)
            )
            if money_changed:
                timeline.record(
                    existing.id,
                    "note",
                    "platform changed the amount; the review page shows the new one",
                    {"amount_minor": draft.amount_minor, "currency": currency},
                    session=session,
                )
        existing = reload(existing)
    elif changed.keys() & {"amount_minor", "currency"}:
        timeline.record(
            existing.id,
            "note",
            f"platform reports a different amount while the order is {existing.state}",
            {"amount_minor": draft.amount_minor, "currency": currency},
        )
    return existing


# --- tax -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaxQuote:
    mode: str
    country: str | None = None
    rate: Decimal | None = None
    amount_minor: int = 0

    @property
    def label(self) -> str | None:
        if self.mode != "fixed" or self.rate is None:
            return None
        return f"Tax ({self.country} {self.rate.normalize():f}%)"


def tax_countries(settings: Settings) -> list[str]:
    return list(settings.tax_rates.keys())


def quote_tax(settings: Settings, order: Order, country: str | None) -> TaxQuote:
    mode = settings.tax_mode
    if mode != "fixed":
        return TaxQuote(mode=mode)
    rates = settings.tax_rates
    if country is None:
        country = order.tax_country or next(iter(rates))
    country = country.strip().upper()
    if country not in rates:
        raise CheckoutError(
            400,
            N_("Unknown country"),
            N_("Please choose your country from the list and try again."),
        )
    rate = rates[country]
    return TaxQuote(mode, country, rate, percent_of(order.amount_minor, rate))


# --- paying -------------------------------------------------------------------------------------


# Built once: the next attempt fixed in the row, and the row as it then is.
_PREPARE_ATTEMPT = (
    update(_ORDERS)
    .where(
        _ORDERS.c.id == bindparam("order_id"),
        _ORDERS.c.state == OrderState.OPEN,
        _ORDERS.c.session_attempt == bindparam("attempt"),
    )
    .values(
        session_attempt=bindparam("next_attempt"),
        stripe_session_expires_at=bindparam("expires_at"),
        tax_mode=bindparam("mode"),
        tax_country=bindparam("country"),
        tax_rate=bindparam("rate"),
        tax_minor=bindparam("tax"),
        updated_at=bindparam("now"),
    )
    .returning(*_ORDERS.c)
)


def _prepare_attempt(settings: Settings, order: Order, quote: TaxQuote) -> Order:
    """Fix the parameters of the next Checkout Session in the row, so any retry of the create call
    (a double click, a crash) sends Stripe the same parameters under the same idempotency key."""
    now = utcnow()
    prepared = (
        order.state == OrderState.OPEN
        and order.stripe_session_id is None
        and order.stripe_session_expires_at is not None
        and order.stripe_session_expires_at - now > MIN_SESSION_LIFETIME
        and order.tax_mode == quote.mode
        and (quote.mode != "fixed" or order.tax_country == quote.country)
    )
    if prepared:
        return order
    lifetime = max(settings.stripe_session_minutes, 32)
    # One compare-and-set statement, atomic on its own: committed as it runs, built once.
    with db.statements() as connection:
        row = (
            connection.execute(
                _PREPARE_ATTEMPT,
                {
                    "order_id": order.id,
                    "attempt": order.session_attempt,
                    "next_attempt": order.session_attempt + 1,
                    "expires_at": (now + timedelta(minutes=lifetime)).replace(microsecond=0),
                    "mode": quote.mode,
                    "country": quote.country,
                    "rate": None if quote.rate is None else f"{quote.rate.normalize():f}",
                    "tax": quote.amount_minor,
                    "now": now,
                },
            )
            .mappings()
            .first()
        )
    # The row as this update left it; if another click changed it first, as it is now.
    return order_from_columns(row) if row is not None else reload(order)


def start_payment(services, reference: str, country: str | None = None) -> Next:
    """The Pay button: reuse the open Checkout Session or create one; return where to go."""
    order = load_order(reference)
    if order.is_paid:
        return Next(page="status", order=order)
    if order.state in {OrderState.CANCELLED, OrderState.PAYMENT_FAILED}:
        raise CheckoutError(
            409,
            N_("This order is closed"),
            N_("This order was cancelled. Please go back to the course and start again."),
        )
    if order.state == OrderState.PROCESSING:
        return Next(page="status", order=order)
    if order.state == OrderState.PAYING and order.stripe_session_id:
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
        if stripe_session["status"] == "open":
            return Next(redirect_url=stripe_session["url"], order=order)
        order = sync_session(services, stripe_session, source="pay button")
        if order is None or order.state not in {OrderState.EXPIRED, OrderState.OPEN}:
            return Next(page="status", order=order)
    if order.state == OrderState.EXPIRED:
        with db.transaction() as session:
            transition(
                session,
                order.id,
                OrderState.EXPIRED,
                OrderState.OPEN,
                stripe_session_id=None,
                stripe_session_url=None,
                stripe_session_expires_at=None,
            )
        order = reload(order)
    if order.state != OrderState.OPEN:
        return Next(page="status", order=order)

    options = services.platform(order.platform).checkout_options(order)
    quote = (
        TaxQuote("none")  # the platform's price already includes its tax
        if options.tax_included
        else quote_tax(services.settings, order, country)
    )
    order = _prepare_attempt(services.settings, order, quote)
    if order.state != OrderState.OPEN:
        return Next(page="status", order=order)

    if order.total_minor == 0 and quote.mode != "stripe" and options.mode == "payment":
        # Nothing to charge (a 100% promo): no Stripe session, straight to fulfilment.
        with db.transaction() as session:
            if transition(
                session,
                order.id,
                OrderState.OPEN,
                OrderState.PAID,
                amount_paid_minor=0,
                tax_paid_minor=0,
                paid_at=utcnow(),
            ):
                jobs.enqueue(session, "fulfil", f"fulfil:{order.id}", order_id=order.id)
        return Next(page="status", order=reload(order))

    request = CheckoutRequest(
        order_reference=order.reference,
        platform=order.platform,
        description=order.description,
        sku=order.sku,
        currency=order.currency,
        amount_minor=order.amount_minor,
        tax_minor=order.tax_minor if quote.mode == "fixed" else 0,
        tax_label=quote.label,
        automatic_tax=quote.mode == "stripe",
        customer_email=order.customer_email,
        locale=order.locale,
        success_url=services.url(
            f"/orders/{order.reference}/return?session_id={{CHECKOUT_SESSION_ID}}"
        ),
        cancel_url=options.cancel_url or services.url(f"/orders/{order.reference}/cancelled"),
        expires_at=order.stripe_session_expires_at,
        idempotency_key=f"{order.reference}-attempt-{order.session_attempt}",
        mode=options.mode,
        customer=options.customer,
        setup_future_usage=options.setup_future_usage,
        capture_method=options.capture_method,
        incremental_authorization=options.incremental_authorization,
        receipt_email=(
            order.customer_email if receipts.sender(services.settings, order) == "stripe" else None
        ),
        quantity=order.quantity or 1,
        # A price with its tax inside cannot be split into list price less discount: one line.
        list_unit_minor=None if options.tax_included else order.list_unit_minor,
        promo_code=None if options.tax_included else order.promo_code,
        billing_address_collection=options.billing_address_collection,
        recovery=recovery.offered(services.settings, order),
        shipping_countries=options.shipping_countries,
        tax_id_collection=options.tax_id_collection,
        invoice_creation=options.invoice_creation,
        allow_promotion_codes=options.allow_promotion_codes,
        phone_number_collection=options.phone_number_collection,
    )
    # The create call's timeline event is written with the state change that follows it (on
    # PostgreSQL in the same statement). If the call fails, or that write does, it is written alone.
    calls: list = []
    try:
        stripe_session = services.stripe.create_session(
            request, order_id=order.id, record=calls.append
        )
    except UpstreamError as exc:
        _record_calls(order.id, calls)
        log.warning("could not create a Checkout Session: %s", exc, extra={"order_id": order.id})
        raise CheckoutError(
            503,
            N_("Payment is temporarily unavailable"),
            N_("We could not reach our payment provider. Please try again in a minute."),
        ) from exc
    except Exception:
        _record_calls(order.id, calls)
        raise
    try:
        with db.statements() as connection:  # on PostgreSQL, one statement: atomic on its own
            won = transition(
                connection,
                order.id,
                OrderState.OPEN,
                OrderState.PAYING,
                before=[timeline.call_event(order.id, call) for call in calls],
                stripe_session_id=stripe_session["id"],
                stripe_session_url=stripe_session["url"],
            )
    except Exception:
        _record_calls(order.id, calls)  # rolled back with the transaction
        raise
    if not won:
        order = reload(order)
        if order.state == OrderState.PAYING and order.stripe_session_id == stripe_session["id"]:
            return Next(redirect_url=stripe_session["url"], order=order)  # the other click won
        return Next(page="status", order=order)
    return Next(redirect_url=stripe_session["url"], order=order)


def _record_calls(order_id: int, calls: list) -> None:
    for call in calls:
        timeline.record_call(order_id, call)


# --- payment results ----------------------------------------------------------------------------


def _find_for_session(session, stripe_session) -> Order | None:
    reference = stripe_session.get("client_reference_id") or (
        stripe_session.get("metadata") or {}
    ).get("order_reference")
    order = None
    if reference:
        order = session.scalar(select(Order).where(Order.reference == reference))
    if order is None:
        order = session.scalar(select(Order).where(Order.stripe_session_id == stripe_session["id"]))
    return order


def order_for_session(stripe_session) -> Order | None:
    """The order a Checkout Session (or an event's copy of one) belongs to; None if not ours."""
    with db.reader() as session:
        return _find_for_session(session, stripe_session)


def sync_session(services, stripe_session, *, source: str) -> Order | None:
    """Bring the order in line with a Checkout Session fetched from Stripe. Idempotent.

    Returns the order after the update, or None when the session is not one of ours.
    """
    order = order_for_session(stripe_session)
    if order is None:
        return None
    status = stripe_session.get("status")
    payment_status = stripe_session.get("payment_status")
    if status == "complete" and payment_status in {"paid", "no_payment_required"}:
        record_payment(services, order, stripe_session, source=source)
    elif status == "complete" and _authorised(services, order, stripe_session):
        record_payment(services, order, stripe_session, source=source)  # captured later
    elif status == "complete":
        with db.transaction() as session:
            transition(
                session,
                order.id,
                [OrderState.OPEN, OrderState.PAYING],
                OrderState.PROCESSING,
                stripe_session_id=stripe_session["id"],
            )
    elif status == "expired":
        with db.transaction() as session:
            # Only the session we are waiting on can expire the order; an older one cannot.
            transition(
                session,
                order.id,
                OrderState.PAYING,
                OrderState.EXPIRED,
                where=Order.stripe_session_id == stripe_session["id"],
            )
    return reload(order)


def _authorised(services, order: Order, stripe_session) -> bool:
    """A manual-capture session may complete `unpaid` with its PaymentIntent authorised and
    waiting for capture: that is a payment to record (the hold is captured later)."""
    payment_intent = stripe_session.get("payment_intent")
    if order.capture_method != "manual" or not payment_intent:
        return False
    if not isinstance(payment_intent, str):
        return payment_intent.get("status") == "requires_capture"
    try:
        intent = services.stripe.retrieve_payment_intent(payment_intent, order_id=order.id)
    except UpstreamError:
        return False  # `processing` for now; the status page and the sweep look again
    return intent.get("status") == "requires_capture"


def _present(value):
    """`value` without its empty parts (None, "", [], {}), or None when nothing is left."""
    if isinstance(value, dict):
        kept = {k: v for k, v in ((k, _present(v)) for k, v in value.items()) if v is not None}
        return kept or None
    if isinstance(value, list):
        kept = [v for v in (_present(v) for v in value) if v is not None]
        return kept or None
    return None if value in (None, "") else value


def collected_details(stripe_session: dict) -> tuple[str | None, dict | None]:
    """What Stripe Checkout collected from the payer: their email (lower-case), and the rest
    as the order keeps it: name, phone, billing address, tax ids, shipping, invoice id."""
    customer = stripe_session.get("customer_details") or {}
    email = str(customer.get("email") or "").strip().lower() or None
    shipping = (stripe_session.get("collected_information") or {}).get("shipping_details") or (
        stripe_session.get("shipping_details")
    )
    invoice = stripe_session.get("invoice")
    if isinstance(invoice, dict):
        invoice = invoice.get("id")
    details = _present(
        {
            "name": customer.get("name"),
            "phone": customer.get("phone"),
            "address": customer.get("address"),
            "tax_exempt": customer.get("tax_exempt")
            if customer.get("tax_exempt") != "none"
            else None,
            "tax_ids": [
                {"type": t.get("type"), "value": t.get("value")}
                for t in customer.get("tax_ids") or []
                if isinstance(t, dict)
            ],
            "shipping": shipping if isinstance(shipping, dict) else None,
            "invoice": {"id": invoice} if isinstance(invoice, str) else None,
        }
    )
    return email, details


def _with_invoice(services, order: Order, details: dict | None) -> dict | None:
    """The Stripe invoice of the payment, with its number and links (the buyer's PDF), when the
    session made one. Stripe unreachable: the id alone, the links are on Stripe's dashboard."""
    invoice = (details or {}).get("invoice")
    if not invoice:
        return details
    try:
        found = services.stripe.retrieve_invoice(invoice["id"], order_id=order.id)
    except UpstreamError:
        return details
    links = _present(
        {
            "number": found.get("number"),
            "url": found.get("hosted_invoice_url"),
            "pdf": found.get("invoice_pdf"),
        }
    )
    return {**details, "invoice": {**invoice, **(links or {})}}


def record_payment(services, order: Order, stripe_session, *, source: str) -> bool:
    """`-> paid` compare-and-set; the winner queues the one fulfilment job. Returns True if won."""
    payer_email, details = collected_details(stripe_session)
    details = _with_invoice(services, order, details)
    amount_total = stripe_session.get("amount_total") or 0  # null for a setup-mode session
    total_details = stripe_session.get("total_details") or {}
    tax_paid = total_details.get("amount_tax") or 0
    if order.tax_mode == "fixed":
        tax_paid = order.tax_minor
    payment_intent = stripe_session.get("payment_intent")
    if not isinstance(payment_intent, str) and payment_intent is not None:
        payment_intent = payment_intent.get("id")
    expected_total = order.amount_minor + (
        tax_paid if order.tax_mode == "stripe" else order.tax_minor
    )
    if stripe_session.get("allow_promotion_codes"):
        # A promotion code the buyer entered on Stripe's page: Stripe's discount, not a gap.
        expected_total -= total_details.get("amount_discount") or 0
    currency = (stripe_session.get("currency") or "").upper()
    with db.transaction() as session:
        won = transition(
            session,
            order.id,
            [
                OrderState.OPEN,
                OrderState.PAYING,
                OrderState.PROCESSING,
                OrderState.EXPIRED,
                OrderState.CANCELLED,
                OrderState.PAYMENT_FAILED,
            ],
            OrderState.PAID,
            stripe_session_id=stripe_session["id"],
            stripe_payment_intent_id=payment_intent,
            amount_paid_minor=amount_total,
            tax_paid_minor=tax_paid,
            paid_at=utcnow(),
            amount_authorized_minor=(
                amount_total if order.capture_method == "manual" else order.amount_authorized_minor
            ),
            payer_email=payer_email,
            checkout_details=details,
        )
        if won:
            recovery.record_recovered(session, order, stripe_session, amount_total, currency)
            timeline.record(
                order.id,
                "payment",
                f"payment recorded from {source}",
                {
                    "session": stripe_session["id"],
                    "payment_intent": payment_intent,
                    "amount_total": amount_total,
                    "currency": currency,
                },
                session=session,
            )
            if amount_total != expected_total or currency != order.currency:
                alerts.raise_alert(
                    session,
                    order,
                    "amount_mismatch",
                    f"amount charged differs from the order: {amount_total} {currency} charged, "
                    f"{expected_total} {order.currency} expected",
                    key=str(order.id),
                    detail={
                        "charged": amount_total,
                        "expected": expected_total,
                        "currency": currency,
                    },
                )
            jobs.enqueue(session, "fulfil", f"fulfil:{order.id}", order_id=order.id)
    if won:
        log.info("order %s paid (%s)", order.reference, source, extra={"order_id": order.id})
    return won


def payment_failed(services, stripe_session, reason: str) -> Order | None:
    """A delayed payment method failed after checkout completed."""
    order = order_for_session(stripe_session)
    if order is None:
        return None
    with db.transaction() as session:
        if transition(
            session,
            order.id,
            [OrderState.PROCESSING, OrderState.PAYING],
            OrderState.PAYMENT_FAILED,
            failure_reason=reason,
        ):
            jobs.enqueue(
                session,
                "payment_failed",
                f"payment_failed:{order.id}",
                order_id=order.id,
                payload={"reason": reason},
            )
    return reload(order)


def handle_return(services, reference: str, session_id: str | None) -> Next:
    """The learner came back from Stripe. Trust nothing in the URL: ask Stripe."""
    order = load_order(reference)
    if not session_id or not session_id.startswith("cs_") or len(session_id) > 255:
        raise CheckoutError(400, N_("Invalid return link"), N_("This payment link is not valid."))
    if order.state not in PAID_STATES:
        try:
            stripe_session = services.stripe.retrieve_session(session_id, order_id=order.id)
        except UpstreamError as exc:
            if exc.transient:
                return Next(page="status", order=order)  # the status page keeps checking
            raise CheckoutError(
                400, N_("Invalid return link"), N_("This payment link is not valid.")
            ) from exc
        if stripe_session.get("client_reference_id") != order.reference:
            raise CheckoutError(
                400, N_("Invalid return link"), N_("This payment link is not valid.")
            )
        order = sync_session(services, stripe_session, source="return page")
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", services.settings.inline_fulfil_seconds)
        order = reload(order)
    return next_for_status(services, order)


def next_for_status(services, order: Order) -> Next:
    if order.state == OrderState.FULFILLED:
        target = services.allowed_redirect(order.redirect_url)
        if target:
            return Next(redirect_url=target, order=order)
    return Next(page="status", order=order)


def refresh_status(services, reference: str) -> Next:
    """The self-refreshing status page: check again, nudge a stalled fulfilment, move on."""
    order = load_order(reference)
    # PAYING here means the return page could not reach Stripe: the learner may well have paid.
    if order.state in {OrderState.PROCESSING, OrderState.PAYING} and order.stripe_session_id:
        try:
            stripe_session = services.stripe.retrieve_session(
                order.stripe_session_id, order_id=order.id
            )
            order = sync_session(services, stripe_session, source="status page")
        except UpstreamError:
            pass
    if order.state == OrderState.PAID:
        jobs.run_inline(services, f"fulfil:{order.id}", 1.0, only_if_due=True)
        order = reload(order)
    return next_for_status(services, order)


def cancel_order(services, reference: str) -> Next:
    """The learner gave up: close the Stripe session first (so it can no longer be paid), then
    tell the platform and follow its redirect."""
    order = load_order(reference)
    if order.is_paid or order.state == OrderState.PROCESSING:
        return Next(page="status", order=order)
    if order.state == OrderState.PAYING and order.stripe_session_id:
        try:
            services.stripe.expire_session(order.stripe_session_id, order_id=order.id)
        except UpstreamError as exc:
            if exc.transient:
                raise CheckoutError(
                    503, N_("Please try again"), N_("We could not reach our payment provider.")
                ) from exc
            # Not open any more: it may have been paid in another tab. Ask Stripe.
        stripe_session = services.stripe.retrieve_session(
            order.stripe_session_id, order_id=order.id
        )
        order = sync_session(services, stripe_session, source="cancel")
        if order.is_paid or order.state == OrderState.PROCESSING:
            return Next(page="status", order=order)
    with db.transaction() as session:
        if transition(
            session,
            order.id,
            [OrderState.OPEN, OrderState.PAYING, OrderState.EXPIRED],
            OrderState.CANCELLED,
        ):
            jobs.enqueue(session, "cancel", f"cancel:{order.id}", order_id=order.id)
    jobs.run_inline(services, f"cancel:{order.id}", services.settings.inline_fulfil_seconds)
    order = reload(order)
    target = services.allowed_redirect(order.redirect_url)
    if order.state == OrderState.CANCELLED and target:
        return Next(redirect_url=target, order=order)
    return Next(page="status", order=order)
