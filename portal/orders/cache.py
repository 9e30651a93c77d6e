"""The learner pages' order read (`portal.orders.view`), kept per process while the row has not
changed. Nothing outside `portal.orders` knows about it.

Learners reload the review page, come back to it from Stripe, keep it open in a tab. On
PostgreSQL each process keeps the columns of the orders it showed last, each with its row version
(`xmin`, the transaction that wrote the row as it is now: any UPDATE, from any process, host or
psql prompt, gives the row a new one).

- While the process's order change listener is live (`portal.orders.changes`: a trigger NOTIFYs
  every change to an order as it commits), a kept order is shown again without asking the
  database at all; the notification of a change drops it.
- Otherwise (the listener is connecting, reconnecting, cannot hear, or is switched off with
  `PORTAL_ORDER_CHANGE_LISTENER=0`), a page asks only for the row's version, a one-column index
  look-up, and reads the row again when it differs.

What is kept is an immutable mapping of the columns; every page gets an `Order` of its own made
from it, so no object is shared between requests or threads. SQLite has neither row versions nor
NOTIFY: there every page reads the row. The same-run A/B that keeps this is in
docs/performance.md.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from types import MappingProxyType

from cachetools import TTLCache
from flask import current_app, has_app_context
from sqlalchemy import bindparam, literal_column, select

from portal.db import db
from portal.models import Order

EXTENSION = "portal.kept_orders"
_ORDERS = Order.__table__
# `xmin` is PostgreSQL's own system column: SQLite has nothing like it (see the docstring).
_VERSION_BY_REFERENCE = select(literal_column("xmin::text")).where(
    _ORDERS.c.reference == bindparam("reference")
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

    # --- what the listener tells (portal.orders.changes) ----------------------------------------

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
    app.extensions[EXTENSION] = KeptOrders()


def kept_orders() -> KeptOrders | None:
    """This app's kept orders, when there is an app and its database keeps row versions."""
    if not has_app_context() or not db.is_postgres:
        return None
    kept = current_app.extensions.get(EXTENSION)
    listening = current_app.config["PORTAL"].order_change_listener
    if kept is not None and kept.listener is None and listening:
        kept.listener = db.order_changes()
        kept.listener.subscribe(kept)
    return kept


def read_columns(kept: KeptOrders, reference: str) -> Mapping | None:
    """The order's columns and `row_version`: the kept ones while the listener vouches for
    them or the row has not changed since they were read, else read afresh and kept. None when
    there is no such order."""
    columns = kept.trusted(reference)
    if columns is not None:
        return columns
    mark = kept.mark()
    with db.statements() as connection:
        if mark is None:
            version = connection.execute(_VERSION_BY_REFERENCE, {"reference": reference}).scalar()
            if version is None:
                return None
            columns = kept.get(reference, version)
            if columns is not None:
                return columns
        row = connection.execute(_ROW_WITH_VERSION, {"reference": reference}).mappings().first()
    if row is None:
        return None
    columns = MappingProxyType(dict(row))
    kept.put(reference, columns["row_version"], columns, mark)
    return columns
