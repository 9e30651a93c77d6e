"""`Idempotency-Key` on POST: the first answer under a key (per API key) is the answer to every
retry with the same body; the same key with a different body is refused, as Stripe does.

A record is claimed (inserted without an answer) before the work starts, so two concurrent
retries cannot both do it: the second is told the first is still running. Invalid requests (400)
and outages (5xx) are not kept, so fixing the request or retrying later works.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from portal.api.errors import ApiError
from portal.db import db
from portal.models import IdempotencyRecord, utcnow

MAX_KEY_LENGTH = 255
STALE_CLAIM = timedelta(minutes=2)  # a claim this old belongs to a request that died


def request_hash(method: str, path: str, body: dict) -> str:
    canonical = json.dumps(
        {"method": method, "path": path, "body": body}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def claim(api_key_id: int, key: str, digest: str) -> IdempotencyRecord | None:
    """None if this request is the first under `key` (go ahead); else the record to replay."""
    if not key or len(key) > MAX_KEY_LENGTH:
        raise ApiError(
            400,
            "parameter_invalid",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters.",
            "Idempotency-Key",
        )
    for _ in range(2):
        try:
            with db.transaction() as session:
                session.add(IdempotencyRecord(api_key_id=api_key_id, key=key, request_hash=digest))
            return None
        except IntegrityError:
            pass
        with db.reader() as session:
            record = session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
                )
            )
        if record is None:
            continue  # released between our insert and our read: try again
        if record.request_hash != digest:
            raise ApiError(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was used with different parameters; use a new key.",
                "Idempotency-Key",
            )
        if record.status is not None:
            return record
        if utcnow() - record.created_at < STALE_CLAIM:
            raise ApiError(
                409,
                "idempotency_request_in_progress",
                "A request with this Idempotency-Key is still being processed; retry shortly.",
                "Idempotency-Key",
            )
        release(record.id)
    raise ApiError(409, "idempotency_request_in_progress", "Retry shortly.", "Idempotency-Key")


def _record_id(api_key_id: int, key: str) -> int | None:
    with db.reader() as session:
        return session.scalar(
            select(IdempotencyRecord.id).where(
                IdempotencyRecord.api_key_id == api_key_id, IdempotencyRecord.key == key
            )
        )


def finish(api_key_id: int, key: str, status: int, body: dict, *, keep: bool) -> None:
    record_id = _record_id(api_key_id, key)
    if record_id is None:
        return
    if not keep:
        release(record_id)
        return
    with db.transaction() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.id == record_id)
            .values(status=status, response=body)
        )


def release(record_id: int) -> None:
    with db.transaction() as session:
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))
