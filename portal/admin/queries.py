"""Console reads: order search and export, one order with its timeline, the audit log, the users,
the pages of the webhook delivery log (its rows come from portal/api/queries). The dashboard's
and /metrics' figures are in portal/admin/figures.py. Every filter and count runs on an indexed
column (see the indexes at the end of portal/models.py), so the pages stay cheap as the tables
grow."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import and_, func, or_, select

from portal.api import queries as webhook_log
from portal.db import db
from portal.models import (
    AuditEntry,
    Job,
    Order,
    OrderEvent,
    User,
)
from portal.money import to_decimal

PER_PAGE = 50


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
