"""Cleeng's tables: the Stripe Customer kept per Cleeng customer (`cleeng_customers`), and the
payments the portal reports to Cleeng (`cleeng_payments`), with their reads and writes. They
are on the portal's `Base.metadata`, so alembic (migrations/env.py loads every installed
platform) and the schema see them; the migration is 0003_cleeng.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Integer,
    String,
    Text,
    select,
    update,
)
from sqlalchemy.orm import Mapped, mapped_column

from portal.db import db
from portal.models import Base, UTCDateTime, utcnow
from portal.platforms.cleeng.client import INITIAL


class CleengCustomer(Base):
    """The Stripe Customer that keeps a Cleeng customer's saved cards for off-session renewals."""

    __tablename__ = "cleeng_customers"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # Cleeng's customerId
    stripe_customer_id: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CleengPaymentStatus(enum.StrEnum):
    CHARGING = "charging"  # a recurring charge is under way (Stripe's answer not recorded yet)
    AUTHORISED = "authorized"  # held on the card (manual capture); Cleeng's own spelling
    CAPTURED = "captured"
    REJECTED = "rejected"
    REFUNDED = "refunded"


class CleengPayment(Base):
    """A payment the portal reports to Cleeng: the initial payment of an order (`order_id`), or
    one recurring charge attempt started by a Cleeng webhook (`event_key`)."""

    __tablename__ = "cleeng_payments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    operation: Mapped[str] = mapped_column(String(32))  # initial-payment | recurring-payment
    # The webhook delivery that started a recurring attempt: one attempt per delivery.
    event_key: Mapped[str | None] = mapped_column(String(190), unique=True)
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    cleeng_order_id: Mapped[str | None] = mapped_column(String(64))
    cleeng_payment_id: Mapped[str | None] = mapped_column(String(64), unique=True)
    customer_id: Mapped[str | None] = mapped_column(String(64))
    subscription_id: Mapped[str | None] = mapped_column(String(64), index=True)
    period: Mapped[str | None] = mapped_column(String(64))  # the subscription's expirationDate
    # "subscription:period" while an attempt is charging or captured, NULL once rejected: the
    # unique constraint lets one charge per subscription period through, whatever Cleeng sends.
    renewal_key: Mapped[str | None] = mapped_column(String(190), unique=True)
    payment_details_id: Mapped[str | None] = mapped_column(String(64), index=True)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_payment_method_id: Mapped[str | None] = mapped_column(String(255))
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16), default=CleengPaymentStatus.CHARGING)
    rejected_reason: Mapped[str | None] = mapped_column(Text)
    amount_refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def payment_for_order(order_id: int) -> CleengPayment | None:
    with db.reader() as session:
        return session.scalar(
            select(CleengPayment)
            .where(CleengPayment.order_id == order_id, CleengPayment.operation == INITIAL)
            .order_by(CleengPayment.id.desc())
        )


def save_payment(payment_id: int, **values) -> CleengPayment:
    with db.transaction() as session:
        session.execute(
            update(CleengPayment)
            .where(CleengPayment.id == payment_id)
            .values(updated_at=utcnow(), **values)
        )
    with db.reader() as session:
        return session.get(CleengPayment, payment_id)


def id_of(value) -> str | None:
    """An expandable Stripe field: an id, or the object it names."""
    if isinstance(value, dict):
        return value.get("id")
    return value or None
