"""Console reads: order search and export, one order with its timeline, the dashboard figures,
the audit log, the pages of the webhook delivery log (its rows come from portal/api/queries).
Every filter and count runs on an indexed column (see the indexes at the end of
portal/models.py), so the dashboard stays cheap as the tables grow."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import and_, case, func, or_, select

from portal import recovery
from portal.api import queries as webhook_log
from portal.db import db
from portal.models import (
    PAID_STATES,
    AuditEntry,
    Job,
    JobState,
    Order,
    OrderEvent,
    OrderState,
    User,
    utcnow,
)
from portal.money import to_decimal

PER_PAGE = 50
ATTENTION_AFTER = timedelta(minutes=5)  # paid but not fulfilled for longer than this
ATTENTION_LIMIT = 20
MONEY_ALERTS_FOR = timedelta(days=14)  # the attention list shows money alerts this recent


# Where the platforms' drafts keep their own id of the learner or customer (platform_data).
USER_ID_KEYS = ("user_id", "user", "customer_id")


@dataclass
class OrderFilters:
    platform: str | None = None
    # the platform's reference (a purchase id, a token's jti), our own ord_… reference, or the
    # platform's id of the learner
    platform_ref: str | None = None
    email: str | None = None
    stripe_id: str | None = None  # a Checkout Session (cs_…) or PaymentIntent (pi_…) id
    state: str | None = None
    date_from: date | None = None
    date_to: date | None = None  # inclusive

    def conditions(self) -> list:
        where = []
        if self.platform:
            where.append(Order.platform == self.platform)
        if self.platform_ref:
            ref = self.platform_ref.strip()
            where.append(
                or_(
                    Order.platform_ref == ref,
                    Order.reference == ref,
                    # The platform's own id of the learner or customer, as its draft kept it.
                    *(Order.platform_data[key].as_string() == ref for key in USER_ID_KEYS),
                )
            )
        if self.email:
            email = self.email.strip().lower()
            # The email the platform gave, or the one the payer typed on Stripe's page.
            where.append(or_(func.lower(Order.customer_email) == email, Order.payer_email == email))
        if self.stripe_id:
            stripe_id = self.stripe_id.strip()
            where.append(
                or_(
                    Order.stripe_session_id == stripe_id,
                    Order.stripe_payment_intent_id == stripe_id,
                )
            )
        if self.state:
            where.append(Order.state == self.state)
        if self.date_from:
            where.append(Order.created_at >= datetime.combine(self.date_from, time(), UTC))
        if self.date_to:
            end = datetime.combine(self.date_to + timedelta(days=1), time(), UTC)
            where.append(Order.created_at < end)
        return where

    def as_dict(self) -> dict:
        return {
            k: (v.isoformat() if isinstance(v, date) else v)
            for k, v in self.__dict__.items()
            if v not in (None, "")
        }


@dataclass
class Page:
    items: list
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def search_orders(filters: OrderFilters, page: int = 1, per_page: int = PER_PAGE) -> Page:
    where = filters.conditions()
    with db.reader() as session:
        total = session.scalar(select(func.count(Order.id)).where(*where)) or 0
        page = min(max(page, 1), max(1, math.ceil(total / per_page)))
        items = session.scalars(
            select(Order)
            .where(*where)
            .order_by(Order.created_at.desc(), Order.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        ).all()
    return Page(list(items), total, page, per_page)


EXPORT_COLUMNS = (
    "reference",
    "created_at",
    "platform",
    "platform_ref",
    "state",
    "customer_email",
    "customer_name",
    "description",
    "sku",
    "quantity",
    "currency",
    "amount",
    "tax",
    "amount_paid",
    "amount_refunded",
    "stripe_session_id",
    "stripe_payment_intent_id",
    "paid_at",
    "fulfilled_at",
    "disputed",
    "failure_reason",
)


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    text = str(value)
    # A spreadsheet runs a cell that starts with these as a formula; names and emails come from
    # the platforms, so they are not ours to trust (OWASP "CSV injection").
    if text[:1] in {"=", "+", "-", "@", "\t", "\r"}:
        text = "'" + text
    return text


def _amount(value: int | None, currency: str) -> str:
    return "" if value is None else str(to_decimal(value, currency))


def _row(order: Order) -> list[str]:
    c = order.currency
    values = {
        "reference": order.reference,
        "created_at": order.created_at,
        "platform": order.platform,
        "platform_ref": order.platform_ref,
        "state": order.state,
        "customer_email": order.customer_email,
        "customer_name": order.customer_name,
        "description": order.description,
        "sku": order.sku,
        "quantity": order.quantity,
        "currency": c,
        "amount": _amount(order.amount_minor, c),
        "tax": _amount(order.tax_paid_minor if order.is_paid else order.tax_minor, c),
        "amount_paid": _amount(order.amount_paid_minor, c),
        "amount_refunded": _amount(order.amount_refunded_minor, c),
        "stripe_session_id": order.stripe_session_id,
        "stripe_payment_intent_id": order.stripe_payment_intent_id,
        "paid_at": order.paid_at,
        "fulfilled_at": order.fulfilled_at,
        "disputed": "yes" if order.disputed else "no",
        "failure_reason": order.failure_reason,
    }
    return [_cell(values[name]) for name in EXPORT_COLUMNS]


def export_orders(filters: OrderFilters, batch: int = 500) -> Iterator[str]:
    """CSV text, a batch of rows at a time (keyset pagination: each batch is its own short read,
    so a large export never holds a transaction open)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    where = filters.conditions()
    after: tuple[datetime, int] | None = None
    while True:
        query = select(Order).where(*where)
        if after is not None:
            created, order_id = after
            query = query.where(
                or_(
                    Order.created_at < created,
                    and_(Order.created_at == created, Order.id < order_id),
                )
            )
        with db.reader() as session:
            orders = session.scalars(
                query.order_by(Order.created_at.desc(), Order.id.desc()).limit(batch)
            ).all()
        for order in orders:
            writer.writerow(_row(order))
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(orders) < batch:
            return
        after = (orders[-1].created_at, orders[-1].id)


# --- one order ---------------------------------------------------------------------------------


@dataclass
class OrderDetail:
    order: Order
    events: list[OrderEvent]
    jobs: list[Job]


def order_detail(reference: str) -> OrderDetail | None:
    with db.reader() as session:
        order = session.scalar(select(Order).where(Order.reference == reference))
        if order is None:
            return None
        events = session.scalars(
            select(OrderEvent).where(OrderEvent.order_id == order.id).order_by(OrderEvent.id)
        ).all()
        order_jobs = session.scalars(
            select(Job).where(Job.order_id == order.id).order_by(Job.id)
        ).all()
    return OrderDetail(order, list(events), list(order_jobs))


# --- outbound webhook deliveries ----------------------------------------------------------------


def search_webhook_deliveries(
    filters: webhook_log.DeliveryFilters, page: int = 1, per_page: int = PER_PAGE
) -> Page:
    total = webhook_log.count_deliveries(filters)
    page = min(max(page, 1), max(1, math.ceil(total / per_page)))
    items = webhook_log.list_deliveries(filters, per_page, (page - 1) * per_page)
    return Page(items, total, page, per_page)


# --- dashboard ---------------------------------------------------------------------------------


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


# --- audit log ---------------------------------------------------------------------------------


def audit_log(
    actor: str | None = None, action: str | None = None, page: int = 1, per_page: int = PER_PAGE
) -> Page:
    where = []
    if actor:
        where.append(AuditEntry.actor == actor.strip().lower())
    if action:
        where.append(AuditEntry.action == action.strip())
    with db.reader() as session:
        total = session.scalar(select(func.count(AuditEntry.id)).where(*where)) or 0
        page = min(max(page, 1), max(1, math.ceil(total / per_page)))
        items = session.scalars(
            select(AuditEntry)
            .where(*where)
            .order_by(AuditEntry.id.desc())
            .limit(per_page)
            .offset((page - 1) * per_page)
        ).all()
    return Page(list(items), total, page, per_page)


def audit_actions() -> list[str]:
    with db.reader() as session:
        return list(
            session.scalars(select(AuditEntry.action).distinct().order_by(AuditEntry.action))
        )


def users() -> list[User]:
    with db.reader() as session:
        return list(session.scalars(select(User).order_by(User.email)))
