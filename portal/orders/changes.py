"""Which orders changed, heard from PostgreSQL as it happens, so learner pages need not ask.

A trigger on `orders` (migration 0007) sends `NOTIFY portal_orders, '<reference>'` with every
UPDATE or DELETE, from any process, host or psql prompt; PostgreSQL delivers it when (and only
if) the change commits. Each portal process runs one `ChangeListener`: a thread that LISTENs on a
connection of its own and tells its subscribers (`portal.orders.cache.KeptOrders`) which references
changed, so an order a page showed can be shown again without a database round trip until it
changes.

The listener is trusted only while it is known to hear: when it connects, and every
`heartbeat` seconds after, it sends a probe of its own through the ordinary connection pool and
must hear it back within `probe_timeout`. Until the first probe comes back, after a lost
connection, or when a probe goes missing (a connection pooler in transaction mode, which does
not carry LISTEN, or a half-dead socket), it reports itself not live, its subscribers forget
what they kept, and pages ask the database for each order's row version as they did before.
SQLite has no NOTIFY; there, pages read the order every time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
import weakref

from sqlalchemy import text
from sqlalchemy.engine import Engine

log = logging.getLogger("portal.order_changes")  # the name operators' log filters know

CHANNEL = "portal_orders"
PROBE_PREFIX = "portal-probe:"


class ChangeListener:
    """LISTENs for changed orders on a connection of its own, on a daemon thread started by the
    first subscriber. Subscribers need two methods: `changed(reference)` and `reset(live)`."""

    def __init__(self, engine: Engine, *, heartbeat: float = 5.0, probe_timeout: float = 2.0):
        self.engine = engine
        self.heartbeat = heartbeat
        self.probe_timeout = probe_timeout
        self.live = False
        self._subscribers: weakref.WeakSet = weakref.WeakSet()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connection = None

    def subscribe(self, subscriber) -> None:
        with self._lock:
            if subscriber in self._subscribers:
                return
            self._subscribers.add(subscriber)
            subscriber.reset(False)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="portal-order-changes", daemon=True
                )
                self._thread.start()

    @property
    def backend_pid(self) -> int | None:
        """The PostgreSQL backend of the listening connection, while there is one."""
        connection = self._connection
        return connection.info.backend_pid if connection is not None else None

    def stop(self, wait: float = 0.0) -> None:
        """Ends the thread, and with it its connection, within a quarter of a second (the
        engine is being replaced or closed), waiting up to `wait` seconds for that: a probe in
        flight returns its pooled connection, and the listening connection is closed, before
        the engine's pool is disposed (a connection left behind is never closed)."""
        self._stop.set()
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(wait)
        self._set_live(False)

    # --- the thread -----------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.5
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self._listen()
            except Exception as error:  # noqa: BLE001 - any failure: fall back, then reconnect
                if not self._stop.is_set():
                    log.warning(
                        "order change listener stopped (%s: %s); learner pages check each "
                        "order's row version until it is back",
                        type(error).__name__,
                        str(error).splitlines()[0] if str(error) else "",
                    )
            self._set_live(False)
            if time.monotonic() - started > 60:
                delay = 0.5  # it had been working: reconnect quickly
            self._stop.wait(delay)
            delay = min(delay * 2, 30.0)

    def _listen(self) -> None:
        record = self.engine.raw_connection()
        connection = record.driver_connection
        record.detach()  # ours for as long as we listen, never handed to a request
        self._connection = connection
        try:
            connection.autocommit = True
            connection.execute(f"LISTEN {CHANNEL}")
            probe, deadline = self._send_probe(), time.monotonic() + self.probe_timeout
            next_probe = None
            while not self._stop.is_set():
                for note in connection.notifies(timeout=0.25):
                    payload = note.payload
                    if payload == probe:
                        probe, deadline = None, None
                        next_probe = time.monotonic() + self.heartbeat
                        if not self.live:
                            self._set_live(True)
                    elif not payload.startswith(PROBE_PREFIX):
                        self._changed(payload)
                now = time.monotonic()
                if probe is not None and now > deadline:
                    raise ProbeLost(
                        f"no probe back within {self.probe_timeout:g} s (LISTEN needs a direct "
                        "or session-pooled connection)"
                    )
                if probe is None and now >= next_probe:
                    probe, deadline = self._send_probe(), now + self.probe_timeout
        finally:
            self._connection = None
            try:
                connection.close()
            except Exception:  # noqa: BLE001 - already broken
                log.debug("closing the listener's connection failed", exc_info=True)

    def _send_probe(self) -> str:
        """A NOTIFY through the ordinary pool, as a page's write would: heard back, it proves
        the whole path from any connection to this listener."""
        probe = PROBE_PREFIX + uuid.uuid4().hex
        with self.engine.begin() as connection:
            connection.execute(
                text("SELECT pg_notify(:channel, :probe)"),
                {
                    "channel": CHANNEL,
                    "probe": probe,
                },
            )
        return probe

    def _changed(self, reference: str) -> None:
        for subscriber in list(self._subscribers):
            subscriber.changed(reference)

    def _set_live(self, live: bool) -> None:
        # Going live, or falling back: either way what was kept may have missed a change.
        self.live = live
        for subscriber in list(self._subscribers):
            subscriber.reset(live)


class ProbeLost(RuntimeError):
    pass
