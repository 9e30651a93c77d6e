"""The sandbox's own storage: a separate database (SQLite file by default), shared by every
gunicorn worker, so the stand-ins behave like one remote service.

On a SQLite file (the default, and what the benchmarks serve) the calls the stand-ins make on
every request (get, put, the idempotency record, the call log, the controls) go straight to the
`sqlite3` driver over pooled connections with precompiled statements: through SQLAlchemy Core
each of them cost several times the query itself in statement building, cache keys and
connection bookkeeping. Any other database takes the same calls through SQLAlchemy Core. Both
store the same rows: the JSON column holds `json.dumps(data)`, as SQLAlchemy writes it."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from typing import NamedTuple

from sqlalchemy import (
    JSON,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from portal.db import make_engine

metadata = MetaData()

objects = Table(
    "sandbox_objects",
    metadata,
    Column("kind", String(40), primary_key=True),
    Column("id", String(120), primary_key=True),
    Column("data", JSON, nullable=False),
    Column("created", Integer, nullable=False, index=True),
)

idempotency = Table(
    "sandbox_idempotency",
    metadata,
    Column("key", String(300), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("response", Text, nullable=False),
    Column("status", Integer, nullable=False),
)

calls = Table(
    "sandbox_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("api", String(20), nullable=False),
    Column("method", String(10), nullable=False),
    Column("path", String(300), nullable=False),
    Column("body", Text),
    Column("status", Integer, nullable=False),
    Column("at", Float, nullable=False),
)

controls = Table(
    "sandbox_controls",
    metadata,
    Column("name", String(60), primary_key=True),
    Column("value", Float, nullable=False),
)

_engines: dict[str, object] = {}
_direct_pools: dict[str, SqliteConnections | None] = {}
_lock = threading.Lock()


def engine_for(url: str):
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url, pool_size=10)
        return _engines[url]


def init_store(url: str) -> None:
    metadata.create_all(engine_for(url))


class Remembered(NamedTuple):
    """The first answer given under an idempotency key (the fields of its row)."""

    key: str
    request_hash: str
    response: str
    status: int


# The hot statements, in SQLite's dialect. A write of an object is one upsert: the stored data
# is replaced, and `created` (the list order) is set only when the row is new.
_GET = "SELECT data FROM sandbox_objects WHERE kind = ? AND id = ?"
_PUT = (
    "INSERT INTO sandbox_objects (kind, id, data, created) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (kind, id) DO UPDATE SET data = excluded.data"
)
_REMEMBERED = (
    'SELECT "key", request_hash, response, status FROM sandbox_idempotency WHERE "key" = ?'
)
_REMEMBER = (
    'INSERT INTO sandbox_idempotency ("key", request_hash, response, status) VALUES (?, ?, ?, ?)'
)
_LOG_CALL = (
    "INSERT INTO sandbox_calls (api, method, path, body, status, at) VALUES (?, ?, ?, ?, ?, ?)"
)
_CONTROL = "SELECT value FROM sandbox_controls WHERE name = ?"
_CONTROLS = "SELECT name, value FROM sandbox_controls"
_SET_CONTROL = (
    "INSERT INTO sandbox_controls (name, value) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value"
)


class SqliteConnections:
    """Connections to one SQLite file, each used by one thread at a time and kept for the next
    (as many as ran at once; they are never closed while the process lives). Autocommit: a
    single statement is its own transaction, several are wrapped in BEGIN IMMEDIATE ... COMMIT.
    The settings are the engine's (WAL, a 30 s busy timeout, foreign keys) plus
    synchronous=NORMAL, the usual pairing with WAL: a commit survives a crash of the process,
    and the last ones may be lost only if the machine itself goes down."""

    def __init__(self, path: str):
        self.path = path
        self.idle: list[sqlite3.Connection] = []
        # SQLite has one writer at a time. The threads of this process queue for it here, and
        # each is woken as soon as the one before has committed; SQLite's own busy handler
        # (polling, with sleeps growing to 100 ms) is left to sort out the other processes.
        self.write_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        connection = sqlite3.connect(  # timeout: the busy timeout, as the engine's
            self.path, timeout=30, isolation_level=None, check_same_thread=False
        )
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA foreign_keys=ON")
        return connection

    @contextmanager
    def connection(self):
        # list.pop() and list.append() are atomic: no lock is needed to share the idle list.
        try:
            connection = self.idle.pop()
        except IndexError:
            connection = self._connect()
        try:
            yield connection
        finally:
            if connection.in_transaction:
                connection.rollback()
            self.idle.append(connection)

    @contextmanager
    def writer(self):
        """A connection for one writing statement (its own transaction)."""
        with self.connection() as connection, self.write_lock:
            yield connection

    @contextmanager
    def transaction(self):
        """A connection whose statements commit together at the end of the block."""
        with self.connection() as connection, self.write_lock:
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.rollback()
                raise
            connection.commit()

    def forget(self) -> None:
        """In a forked child: the parent's connections are not this process's to use, and its
        lock may have been held by a thread that the child does not have."""
        self.idle = []
        self.write_lock = threading.Lock()


def _sqlite_connections(url: str, engine) -> SqliteConnections | None:
    """Direct connections for a plain SQLite file URL; None for anything else (another
    database, an in-memory one, URL options), which goes through SQLAlchemy."""
    with _lock:
        if url not in _direct_pools:
            parsed = engine.url
            plain_file = (
                parsed.get_backend_name() == "sqlite"
                and parsed.get_driver_name() == "pysqlite"
                and not parsed.query
                and parsed.database not in (None, "", ":memory:")
                and not parsed.database.startswith("file:")
            )
            # An absolute path, as SQLAlchemy resolves it: the same file whatever the cwd later.
            path = os.path.abspath(parsed.database) if plain_file else None
            _direct_pools[url] = SqliteConnections(path) if plain_file else None
        return _direct_pools[url]


def _forget_connections() -> None:
    for pool in _direct_pools.values():
        if pool is not None:
            pool.forget()


os.register_at_fork(after_in_child=_forget_connections)


class Store:
    def __init__(self, url: str):
        self.engine = engine_for(url)
        metadata.create_all(self.engine)
        self._direct = _sqlite_connections(url, self.engine)

    def get(self, kind: str, object_id: str) -> dict | None:
        if self._direct is not None:
            with self._direct.connection() as connection:
                row = connection.execute(_GET, (kind, object_id)).fetchone()
            return json.loads(row[0]) if row else None
        with self.engine.connect() as connection:
            row = connection.execute(
                select(objects.c.data).where(objects.c.kind == kind, objects.c.id == object_id)
            ).first()
        return dict(row.data) if row else None

    def put(self, kind: str, object_id: str, data: dict, connection=None) -> None:
        """Create or replace an object; `connection`: inside that SQLAlchemy transaction."""
        if connection is None and self._direct is not None:
            self.write([(kind, object_id, data)])
            return

        def write(conn):
            result = conn.execute(
                update(objects)
                .where(objects.c.kind == kind, objects.c.id == object_id)
                .values(data=data)
            )
            if result.rowcount == 0:
                conn.execute(
                    insert(objects).values(
                        kind=kind,
                        id=object_id,
                        data=data,
                        created=int(data.get("created") or time.time()),
                    )
                )

        if connection is not None:
            write(connection)
            return
        with self.engine.begin() as conn:
            write(conn)

    def write(self, puts, remember: tuple[str, str, dict, int] | None = None) -> None:
        """In one transaction: `remember` = (key, request_hash, response, status), the first
        answer under an idempotency key (IntegrityError when the key has one already), then
        each (kind, id, data) of `puts` created or replaced."""
        if self._direct is None:
            with self.engine.begin() as connection:
                if remember is not None:
                    self.remember(connection, *remember)
                for kind, object_id, data in puts:
                    self.put(kind, object_id, data, connection)
            return
        # Encoded before the write lock is taken, and once: the answer remembered under an
        # idempotency key is often the very object stored (the same json.dumps text either way).
        texts: dict[int, str] = {}
        rows = []
        for kind, object_id, data in puts:
            text = texts[id(data)] = json.dumps(data)
            rows.append((kind, object_id, text, int(data.get("created") or time.time())))
        if remember is None and len(rows) == 1:
            with self._direct.writer() as connection:  # one statement: no BEGIN, no COMMIT
                connection.execute(_PUT, rows[0])
            return
        if remember is not None:
            key, request_hash, response, status = remember
            text = texts.get(id(response)) or json.dumps(response)
            params = (key, request_hash, text, status)
        with self._direct.transaction() as connection:
            if remember is not None:
                try:
                    connection.execute(_REMEMBER, params)
                except sqlite3.IntegrityError as error:  # as SQLAlchemy raises it, on any database
                    raise IntegrityError(_REMEMBER, params, error) from error
            connection.executemany(_PUT, rows)

    def list(self, kind: str, *, created_gte: int = 0) -> list[dict]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(objects.c.data)
                .where(objects.c.kind == kind, objects.c.created >= created_gte)
                .order_by(objects.c.created.desc(), objects.c.id.desc())
            ).all()
        return [dict(r.data) for r in rows]

    # Idempotency: the first answer under a key is the answer for every retry with that key.
    def remembered(self, key: str) -> Remembered | None:
        if self._direct is not None:
            with self._direct.connection() as connection:
                row = connection.execute(_REMEMBERED, (key,)).fetchone()
            return Remembered(*row) if row else None
        with self.engine.connect() as connection:
            row = connection.execute(select(idempotency).where(idempotency.c.key == key)).first()
        return Remembered(*row) if row else None

    def remember(self, connection, key: str, request_hash: str, response: dict, status: int):
        connection.execute(
            insert(idempotency).values(
                key=key, request_hash=request_hash, response=json.dumps(response), status=status
            )
        )

    def log_call(self, api: str, method: str, path: str, body: str | None, status: int) -> None:
        if self._direct is not None:
            with self._direct.writer() as connection:
                connection.execute(_LOG_CALL, (api, method, path, body, status, time.time()))
            return
        with self.engine.begin() as connection:
            connection.execute(
                insert(calls).values(
                    api=api, method=method, path=path, body=body, status=status, at=time.time()
                )
            )

    def calls(self, api: str | None = None) -> list[dict]:
        query = select(calls).order_by(calls.c.id)
        if api:
            query = query.where(calls.c.api == api)
        with self.engine.connect() as connection:
            return [dict(r._mapping) for r in connection.execute(query)]

    # Controls are read from the database on every call (one indexed query, a few microseconds
    # on SQLite), never cached: a value set through any worker holds at once in all of them.
    def control(self, name: str, default: float) -> float:
        if self._direct is not None:
            with self._direct.connection() as connection:
                row = connection.execute(_CONTROL, (name,)).fetchone()
            return row[0] if row else default
        with self.engine.connect() as connection:
            row = connection.execute(
                select(controls.c.value).where(controls.c.name == name)
            ).first()
        return row.value if row else default

    def controls(self, defaults: dict[str, float]) -> dict[str, float]:
        """Several controls in one query: {name: value, or its default}."""
        if self._direct is not None:
            with self._direct.connection() as connection:
                rows = connection.execute(_CONTROLS).fetchall()  # a handful of rows at most
            values = dict(defaults)
            for name, value in rows:
                if name in values:
                    values[name] = value
            return values
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(controls.c.name, controls.c.value).where(controls.c.name.in_(defaults))
            ).all()
        return {**defaults, **dict(rows)}

    def set_control(self, name: str, value: float) -> None:
        if self._direct is not None:
            with self._direct.writer() as connection:
                connection.execute(_SET_CONTROL, (name, value))
            return
        with self.engine.begin() as connection:
            result = connection.execute(
                update(controls).where(controls.c.name == name).values(value=value)
            )
            if result.rowcount == 0:
                try:
                    connection.execute(insert(controls).values(name=name, value=value))
                except IntegrityError:
                    connection.execute(
                        update(controls).where(controls.c.name == name).values(value=value)
                    )

    def reset(self) -> None:
        with self.engine.begin() as connection:
            for table in (objects, idempotency, calls, controls):
                connection.execute(delete(table))
