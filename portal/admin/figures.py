"""The console's figures, read from the database: the dashboard (orders started, paid and
fulfilled by window; orders needing attention; money alerts; calls out and their failures; the
job queue's backlog; recovered checkouts) and what `/metrics` reports. Every count runs on an
indexed column (see the indexes at the end of portal/models.py), so the dashboard stays cheap as
the tables grow."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

from sqlalchemy import and_, case, func, or_, select

from portal import recovery
from portal.db import db
from portal.models import (
    PAID_STATES,
    Job,
    JobState,
    Order,
    OrderEvent,
    OrderState,
    utcnow,
)

ATTENTION_AFTER = timedelta(minutes=5)  # paid but not fulfilled for longer than this
ATTENTION_LIMIT = 20
MONEY_ALERTS_FOR = timedelta(days=14)  # the attention list shows money alerts this recent


# --- the dashboard --------------------------------------------------------------------------------


@dataclass
class Window:
    label: str
    since: datetime
    started: int = 0
    paid: int = 0
    fulfilled: int = 0
    converted: int = 0  # of the orders started in the window, how many were paid

    @property
    def conversion(self) -> float | None:
        return self.converted / self.started if self.started else None


@dataclass
class CallStats:
    target: str  # a platform name, or "stripe"
    calls: int = 0
    errors: int = 0

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.calls if self.calls else None


@dataclass
class Backlog:
    """One job kind's share of the queue (mail is the kind "mail"): what is due now and how long
    the longest-waiting of it has been due, what waits for its next retry after a failure and
    how old the oldest of that is, what a worker holds right now, and what was given up."""

    kind: str
    due: int = 0
    due_since: datetime | None = None  # the run_at of the longest-due job
    retrying: int = 0
    retrying_since: datetime | None = None  # the created_at of the oldest job waiting to retry
    next_retry: datetime | None = None
    running: int = 0
    dead: int = 0

    def due_for(self, now: datetime) -> timedelta | None:
        return now - self.due_since if self.due_since is not None else None

    def oldest_retry_age(self, now: datetime) -> timedelta | None:
        return now - self.retrying_since if self.retrying_since is not None else None


@dataclass
class Dashboard:
    now: datetime
    windows: list[Window]
    unfulfilled: list[Order]
    unfulfilled_count: int
    fulfil_failed: list[Order]
    fulfil_failed_count: int
    disputed: list[Order]
    disputed_count: int
    calls: list[CallStats] = field(default_factory=list)
    backlog: list[Backlog] = field(default_factory=list)
    # (alert event, order): disputes opened or lost, amount mismatches, refunds not taken.
    money_alerts: list[tuple[OrderEvent, Order]] = field(default_factory=list)
    money_alerts_count: int = 0
    # Abandoned checkouts recovered (paid through Stripe's recovery link), last 30 days:
    # (currency, orders, amount paid in minor units).
    recovered: list[tuple[str, int, int]] = field(default_factory=list)


def _window(session, label: str, since: datetime) -> Window:
    window = Window(label, since)
    by_state = session.execute(
        select(Order.state, func.count(Order.id))
        .where(Order.created_at >= since)
        .group_by(Order.state)
    ).all()
    for state, count in by_state:
        window.started += count
        if state in PAID_STATES:
            window.converted += count
    window.paid = session.scalar(select(func.count(Order.id)).where(Order.paid_at >= since)) or 0
    window.fulfilled = (
        session.scalar(select(func.count(Order.id)).where(Order.fulfilled_at >= since)) or 0
    )
    return window


def _http_failed():
    """A call that failed on the other side: 5xx, or no answer at all (timeout, refused)."""
    status = OrderEvent.detail["status"].as_integer()
    return or_(status >= 500, status.is_(None))


def call_stats(since: datetime) -> list[CallStats]:
    """Calls out and their failures since `since`, per platform and for Stripe, from the timeline's
    "http" events (the gateway records Stripe calls with the method STRIPE)."""
    is_stripe = OrderEvent.detail["method"].as_string() == "STRIPE"
    target = case((is_stripe, "stripe"), else_=Order.platform)
    with db.reader() as session:
        rows = session.execute(
            select(
                target.label("target"),
                func.count(OrderEvent.id),
                func.sum(case((_http_failed(), 1), else_=0)),
            )
            .join(Order, Order.id == OrderEvent.order_id)
            .where(OrderEvent.kind == "http", OrderEvent.created_at >= since)
            .group_by(target)
        ).all()
    stats = {name: CallStats(name, calls, int(errors or 0)) for name, calls, errors in rows}
    stats.setdefault("stripe", CallStats("stripe"))
    return sorted(stats.values(), key=lambda s: (s.target == "stripe", s.target))


def attention(session, now: datetime) -> dict:
    stalled = (Order.state == OrderState.PAID, Order.paid_at < now - ATTENTION_AFTER)
    failed = (Order.state == OrderState.FULFIL_FAILED,)
    disputed = (Order.disputed.is_(True), Order.state != OrderState.REFUNDED)

    def listing(conditions, order_by):
        items = session.scalars(
            select(Order).where(*conditions).order_by(order_by).limit(ATTENTION_LIMIT)
        ).all()
        count = session.scalar(select(func.count(Order.id)).where(*conditions)) or 0
        return list(items), count

    money = (
        OrderEvent.kind == "alert",
        OrderEvent.created_at >= now - MONEY_ALERTS_FOR,
        OrderEvent.detail["alert"].as_string().is_not(None),
    )
    alerts = session.execute(
        select(OrderEvent, Order)
        .join(Order, Order.id == OrderEvent.order_id)
        .where(*money)
        .order_by(OrderEvent.id.desc())
        .limit(ATTENTION_LIMIT)
    ).all()
    alerts_count = session.scalar(select(func.count(OrderEvent.id)).where(*money)) or 0
    return {
        "unfulfilled": listing(stalled, Order.paid_at),
        "fulfil_failed": listing(failed, Order.updated_at.desc()),
        "disputed": listing(disputed, Order.updated_at.desc()),
        "money_alerts": ([tuple(row) for row in alerts], alerts_count),
    }


def job_backlog(now: datetime | None = None) -> list[Backlog]:
    """The queue per job kind, as `Backlog` rows; kinds with nothing queued or dead are left out.
    A periodic job (the expiry sweep, reconciliation) waiting for its next turn is not backlog;
    one that is overdue is (no worker is running)."""
    now = now or utcnow()
    queued = Job.state == JobState.QUEUED
    held = and_(queued, Job.locked_until.is_not(None), Job.locked_until > now)
    free = and_(queued, or_(Job.locked_until.is_(None), Job.locked_until <= now))
    due = and_(free, Job.run_at <= now)
    retrying = and_(free, Job.run_at > now, ~Job.dedupe_key.startswith("periodic:"))

    def count(condition):
        return func.sum(case((condition, 1), else_=0))

    def earliest(condition, column):
        return func.min(case((condition, column)))

    with db.reader() as session:
        rows = session.execute(
            select(
                Job.kind,
                count(due),
                earliest(due, Job.run_at),
                count(retrying),
                earliest(retrying, Job.created_at),
                earliest(retrying, Job.run_at),
                count(held),
                count(Job.state == JobState.DEAD),
            )
            .where(Job.state.in_([JobState.QUEUED, JobState.DEAD]))
            .group_by(Job.kind)
        ).all()
    backlog = []
    for kind, due_count, due_since, retry_count, retry_since, next_retry, running, dead in rows:
        row = Backlog(
            kind,
            due=int(due_count or 0),
            due_since=due_since,
            retrying=int(retry_count or 0),
            retrying_since=retry_since,
            next_retry=next_retry,
            running=int(running or 0),
            dead=int(dead or 0),
        )
        if row.due or row.retrying or row.running or row.dead:
            backlog.append(row)
    # Mail first (a customer waits for a pay link), then the longest-due kinds.
    return sorted(backlog, key=lambda b: (b.kind != "mail", b.due_since or now, b.kind))


def dashboard(now: datetime | None = None) -> Dashboard:
    now = now or utcnow()
    midnight = datetime.combine(now.astimezone(UTC).date(), time(), UTC)
    week = now - timedelta(days=7)
    with db.reader() as session:
        windows = [_window(session, "Today (UTC)", midnight), _window(session, "Last 7 days", week)]
        needs = attention(session, now)
    return Dashboard(
        now=now,
        windows=windows,
        unfulfilled=needs["unfulfilled"][0],
        unfulfilled_count=needs["unfulfilled"][1],
        fulfil_failed=needs["fulfil_failed"][0],
        fulfil_failed_count=needs["fulfil_failed"][1],
        disputed=needs["disputed"][0],
        disputed_count=needs["disputed"][1],
        calls=call_stats(week),
        backlog=job_backlog(now),
        money_alerts=needs["money_alerts"][0],
        money_alerts_count=needs["money_alerts"][1],
        recovered=recovery.revenue(now - timedelta(days=30)),
    )


# --- metrics -----------------------------------------------------------------------------------


def orders_by_state() -> dict[str, int]:
    with db.reader() as session:
        rows = session.execute(
            select(Order.state, func.count(Order.id)).group_by(Order.state)
        ).all()
    counts = {str(state): 0 for state in OrderState}
    counts.update(dict(rows))
    return counts


def attention_counts(now: datetime | None = None) -> dict[str, int]:
    now = now or utcnow()
    with db.reader() as session:
        needs = attention(session, now)
    return {name: count for name, (_items, count) in needs.items()}


def open_jobs() -> list[tuple[str, str, int, datetime | None]]:
    """(kind, state, count, oldest run_at) for queued and dead jobs."""
    with db.reader() as session:
        return [
            tuple(row)
            for row in session.execute(
                select(Job.kind, Job.state, func.count(Job.id), func.min(Job.run_at))
                .where(Job.state.in_([JobState.QUEUED, JobState.DEAD]))
                .group_by(Job.kind, Job.state)
            ).all()
        ]
