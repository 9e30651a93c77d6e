"""The database: engine and session factory, short transactions, schema migrations (Alembic)."""

from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# A pooled connection idle for longer than this is pinged before use (a restarted or failed-over
# server, a firewall dropping idle sockets); one in steady use is not, which saves a round trip
# on every request.
IDLE_PING_SECONDS = 10.0


def normalise_url(url: str) -> str:
    """A plain `postgresql://` URL means psycopg 3 (the driver we ship), not psycopg2."""
    parsed = make_url(url)
    if parsed.drivername in {"postgresql", "postgres"}:
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# A process's default pool: a request thread holds a connection only for its statements, never
# while it waits on a platform or on Stripe (tests/test_pool_use.py), so far fewer connections
# than threads keep every thread served; more would only hold PostgreSQL backends open.
DEFAULT_POOL_SIZE = 8


def default_pool_size(threads: int) -> int:
    """Connections per process when PORTAL_DB_POOL_SIZE is not set: one per thread, at most 8."""
    return max(1, min(threads, DEFAULT_POOL_SIZE))


def make_engine(url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine whose PostgreSQL pool holds at most `pool_size` connections (no overflow: a
    thread that finds them all in use waits for one, up to SQLAlchemy's 30 s pool timeout), so
    hosts x workers x pool size bounds what PostgreSQL must accept."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection, _record):
            # WAL lets readers proceed while one writer commits; foreign keys on for integrity.
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        return engine
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
    )
    ping_when_idle(engine)
    return engine


def ping_when_idle(engine: Engine, idle_seconds: float = IDLE_PING_SECONDS) -> None:
    """Pessimistic disconnect handling, only where it can matter: a connection back from the
    pool after `idle_seconds` or more is pinged, and a dead one is replaced (the pool retries
    the checkout with a fresh connection) before any work is sent on it."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_connection, record):
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_connection, record, _proxy):
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < idle_seconds:
            return
        try:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute("SELECT 1")
            finally:
                cursor.close()
            dbapi_connection.rollback()
        except Exception as error:
            raise exc.DisconnectionError("stale pooled connection") from error


class Database:
    """Owns the engine; `transaction()` is the one way the core writes."""

    def __init__(self):
        self.engine: Engine | None = None
        self.sessions: sessionmaker[Session] | None = None
        self.read_sessions: sessionmaker[Session] | None = None
        self.read_engine: Engine | None = None
        self._changes = None
        self._changes_lock = threading.Lock()

    def configure(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.dispose()
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Readers on PostgreSQL run in autocommit: a read is one round trip, not BEGIN, the
        # query and ROLLBACK. Under READ COMMITTED each statement takes its own snapshot anyway.
        readers = self.engine
        if self.engine.dialect.name == "postgresql":
            readers = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self.read_engine = readers
        self.read_sessions = sessionmaker(readers, expire_on_commit=False)

    def dispose(self) -> None:
        """Stops the order change listener and closes every pooled connection."""
        if self._changes is not None:
            self._changes.stop(wait=2.0)
            self._changes = None
        if self.engine is not None:
            self.engine.dispose()

    def order_changes(self):
        """This process's `portal.orders.changes.ChangeListener` (PostgreSQL only, else None),
        made on first use; its thread starts with its first subscriber."""
        if self._changes is None and self.is_postgres:
            from portal.orders.changes import ChangeListener

            with self._changes_lock:
                if self._changes is None:
                    self._changes = ChangeListener(self.engine)
        return self._changes

    @property
    def is_postgres(self) -> bool:
        return self.engine is not None and self.engine.dialect.name == "postgresql"

    @contextmanager
    def transaction(self):
        """A session whose work commits at the end of the block, or rolls back on error."""
        with self.sessions() as session, session.begin():
            yield session

    @contextmanager
    def reader(self):
        """A session for reads only (never for writes: on PostgreSQL it runs in autocommit)."""
        with self.read_sessions() as session:
            yield session

    @contextmanager
    def single_writes(self):
        """A session whose every statement commits on its own as it runs (on PostgreSQL: one
        round trip for an INSERT, not BEGIN, INSERT and COMMIT). Only for writes that stand
        alone, such as appending to a log; anything that must commit together takes
        `transaction()`. Elsewhere it is a transaction committed at the end of the block."""
        if self.is_postgres:
            with self.read_sessions() as session:
                yield session
        else:
            with self.transaction() as session:
                yield session

    @contextmanager
    def statements(self):
        """A Core connection (no ORM) whose every statement stands alone: for the hottest
        single-statement reads and writes (a webhook's de-duplication), where the ORM's
        per-statement work is most of the cost. Autocommit on PostgreSQL; on SQLite a
        transaction committed at the end of the block."""
        if self.is_postgres:
            # The option on the connection, not an option engine's: the same switch to
            # autocommit and back, without the engine-wide event hooks an option engine runs
            # around every connect, begin, statement and rollback (~45 µs a statement).
            with self.engine.connect() as connection:
                yield connection.execution_options(isolation_level="AUTOCOMMIT")
        else:
            with self.engine.begin() as connection:
                yield connection

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))


db = Database()


def alembic_config(url: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade_schema(url: str) -> None:
    """Create or upgrade the schema to the newest migration; safe to run again."""
    from alembic import command

    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    command.upgrade(alembic_config(url), "head")
