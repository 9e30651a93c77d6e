"""The audit log: who did what, when, from where. Written for every sign-in (and every failed
one) and every console action, in the same transaction as the action when there is one."""

from __future__ import annotations

from dataclasses import dataclass

from portal.db import db
from portal.models import AuditEntry


@dataclass(frozen=True)
class Actor:
    """Who is acting and from where; built by the views from the request, so the operations
    themselves never read `request`."""

    user_id: int | None
    email: str
    ip_address: str | None = None
    user_agent: str | None = None

    @classmethod
    def command_line(cls, description: str = "command line") -> Actor:
        return cls(user_id=None, email=description)


def record(
    actor: Actor,
    action: str,
    outcome: str = "ok",
    *,
    target: str | None = None,
    order_id: int | None = None,
    detail: dict | None = None,
    session=None,
) -> None:
    """Append an audit entry; inside `session` when given (it commits with the action)."""
    entry = AuditEntry(
        user_id=actor.user_id,
        actor=actor.email[:320],
        action=action,
        outcome=outcome,
        target=target[:190] if target else None,
        order_id=order_id,
        detail=detail or {},
        ip_address=(actor.ip_address or None) and actor.ip_address[:64],
        user_agent=(actor.user_agent or None) and actor.user_agent[:300],
    )
    if session is not None:
        session.add(entry)
        return
    with db.transaction() as own:
        own.add(entry)
