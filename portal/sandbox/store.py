"""The sandbox's own storage: a separate database (SQLite file by default), shared by every
gunicorn worker, so the stand-ins behave like one remote service. SQLAlchemy Core on any
database."""

from __future__ import annotations

import json
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
    bindparam,
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
_lock = threading.Lock()


def engine_for(url: str):
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url, pool_size=10)
        return _engines[url]


_write_locks: dict[str, threading.Lock] = {}


def write_lock_for(url: str) -> threading.Lock:
    with _lock:
        return _write_locks.setdefault(url, threading.Lock())


def init_store(url: str) -> None:
    metadata.create_all(engine_for(url))


class Remembered(NamedTuple):
    """The first answer given under an idempotency key (the fields of its row)."""

    key: str
    request_hash: str
    response: str
    status: int


# The statements every stand-in request runs, built once: SQLAlchemy then reuses their compiled
# form without building or keying them again.
_GET = select(objects.c.data).where(
    objects.c.kind == bindparam("b_kind"), objects.c.id == bindparam("b_id")
)
_REPLACE = (
    update(objects)
    .where(objects.c.kind == bindparam("b_kind"), objects.c.id == bindparam("b_id"))
    .values(data=bindparam("b_data"))
)
_CREATE = insert(objects).values(
    kind=bindparam("b_kind"),
    id=bindparam("b_id"),
    data=bindparam("b_data"),
    created=bindparam("b_created"),
)
_REMEMBERED = select(idempotency).where(idempotency.c.key == bindparam("key"))
_LOG_CALL = insert(calls)
_CONTROL = select(controls.c.value).where(controls.c.name == bindparam("name"))
_CONTROLS = select(controls.c.name, controls.c.value).where(
    controls.c.name.in_(bindparam("names", expanding=True))
)


class Store:
    def __init__(self, url: str):
        self.engine = engine_for(url)
        metadata.create_all(self.engine)
        self._write_lock = write_lock_for(url) if self.engine.dialect.name == "sqlite" else None

    @contextmanager
    def writing(self):
        """A transaction for writes. SQLite has one writer at a time: this process's threads
        queue for it on a lock, each woken as soon as the one before has committed, and SQLite's
        busy handler (polling, with sleeps growing to 100 ms) is left to the other processes."""
        if self._write_lock is None:
            with self.engine.begin() as connection:
                yield connection
            return
        with self._write_lock, self.engine.begin() as connection:
            yield connection

    def get(self, kind: str, object_id: str) -> dict | None:
        with self.engine.connect() as connection:
            row = connection.execute(_GET, {"b_kind": kind, "b_id": object_id}).first()
        return dict(row.data) if row else None

    def put(self, kind: str, object_id: str, data: dict, connection=None) -> None:
        """Create or replace an object; `connection`: inside that transaction."""

        def write(conn):
            values = {"b_kind": kind, "b_id": object_id, "b_data": data}
            if conn.execute(_REPLACE, values).rowcount == 0:
                created = int(data.get("created") or time.time())
                conn.execute(_CREATE, {**values, "b_created": created})

        if connection is not None:
            write(connection)
            return
        with self.writing() as conn:
            write(conn)

    def write(self, puts, remember: tuple[str, str, dict, int] | None = None) -> None:
        """In one transaction: `remember` = (key, request_hash, response, status), the first
        answer under an idempotency key (IntegrityError when the key has one already), then
        each (kind, id, data) of `puts` created or replaced."""
        with self.writing() as connection:
            if remember is not None:
                self.remember(connection, *remember)
            for kind, object_id, data in puts:
                self.put(kind, object_id, data, connection)

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
        with self.engine.connect() as connection:
            row = connection.execute(_REMEMBERED, {"key": key}).first()
        return Remembered(*row) if row else None

    def remember(self, connection, key: str, request_hash: str, response: dict, status: int):
        connection.execute(
            insert(idempotency).values(
                key=key, request_hash=request_hash, response=json.dumps(response), status=status
            )
        )

    def log_call(self, api: str, method: str, path: str, body: str | None, status: int) -> None:
        with self.writing() as connection:
            connection.execute(
                _LOG_CALL,
                {
                    "api": api,
                    "method": method,
                    "path": path,
                    "body": body,
                    "status": status,
                    "at": time.time(),
                },
            )

    def calls(self, api: str | None = None) -> list[dict]:
        query = select(calls).order_by(calls.c.id)
        if api:
            query = query.where(calls.c.api == api)
        with self.engine.connect() as connection:
            return [dict(r) for r in connection.execute(query).mappings()]

    # Controls are read from the database on every call (one indexed query, a few microseconds
    # on SQLite), never cached: a value set through any worker holds at once in all of them.
    def control(self, name: str, default: float) -> float:
        with self.engine.connect() as connection:
            row = connection.execute(_CONTROL, {"name": name}).first()
        return row.value if row else default

    def controls(self, defaults: dict[str, float]) -> dict[str, float]:
        """Several controls in one query: {name: value, or its default}."""
        with self.engine.connect() as connection:
            rows = connection.execute(_CONTROLS, {"names": list(defaults)}).all()
        return {**defaults, **dict(rows)}

    def set_control(self, name: str, value: float) -> None:
        with self.writing() as connection:
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
        with self.writing() as connection:
            for table in (objects, idempotency, calls, controls):
                connection.execute(delete(table))
