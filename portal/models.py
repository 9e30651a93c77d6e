"""Database models: orders, their event log, the job outbox, Stripe events seen, used tokens."""

from __future__ import annotations

import enum
import secrets
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC timestamps on every backend (SQLite drops the zone: put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            value = value.astimezone(UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)  # stored as sortable UTC text
        return value

    def process_result_value(self, value, dialect):
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class OrderState(enum.StrEnum):
    OPEN = "open"  # created, no Stripe session yet (or the last one expired)
    PAYING = "paying"  # a Stripe Checkout Session is open for it
    PROCESSING = "processing"  # checkout completed, payment not yet settled (delayed methods)
    PAID = "paid"  # money received; fulfilment queued
    FULFILLED = "fulfilled"  # the platform confirmed
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    PAYMENT_FAILED = "payment_failed"
    FULFIL_FAILED = "fulfil_failed"  # needs an operator
    REFUNDED = "refunded"
    PARTIALLY_REFUNDED = "partially_refunded"


PAID_STATES = frozenset(
    {
        OrderState.PAID,
        OrderState.FULFILLED,
        OrderState.FULFIL_FAILED,
        OrderState.REFUNDED,
        OrderState.PARTIALLY_REFUNDED,
    }
)


LEARNER_OPEN_STATES = "state IN ('open', 'paying', 'expired')"


def new_reference() -> str:
    return "ord_" + secrets.token_urlsafe(18)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("platform", "platform_ref", name="uq_orders_platform_ref"),
        Index("ix_orders_state_updated", "state", "updated_at"),
        Index("ix_orders_learner_key", "learner_key"),
        # One order at a time that a learner can still pay for the same thing: two "Join now"
        # posts at once cannot both open one.
        Index(
            "uq_orders_learner_open",
            "learner_key",
            unique=True,
            postgresql_where=text(LEARNER_OPEN_STATES),
            sqlite_where=text(LEARNER_OPEN_STATES),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reference: Mapped[str] = mapped_column(String(40), unique=True, default=new_reference)
    platform: Mapped[str] = mapped_column(String(32))
    platform_ref: Mapped[str] = mapped_column(String(190))
    # The learner and what they buy, for a platform that sends a new reference with every
    # attempt (OpenLearning: a new token per "Join now"): a digest, no personal data.
    learner_key: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(24), default=OrderState.OPEN)

    description: Mapped[str] = mapped_column(String(500))
    sku: Mapped[str | None] = mapped_column(String(190))
    quantity: Mapped[int] = mapped_column(Integer, default=1)
    currency: Mapped[str] = mapped_column(String(3))
    # What the platform says the learner pays before tax (quantity and promo included).
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    list_unit_minor: Mapped[int | None] = mapped_column(BigInteger)
    promo_code: Mapped[str | None] = mapped_column(String(190))
    tax_mode: Mapped[str] = mapped_column(String(16), default="none")
    tax_country: Mapped[str | None] = mapped_column(String(2))
    tax_rate: Mapped[str | None] = mapped_column(String(16))  # percent as text, e.g. "20"
    tax_minor: Mapped[int] = mapped_column(BigInteger, default=0)  # quoted (fixed mode)

    customer_email: Mapped[str | None] = mapped_column(String(320))
    customer_name: Mapped[str | None] = mapped_column(String(300))
    # What Stripe Checkout collected: the email the payer typed (stored lower-case), and for a
    # B2B session the addresses, phone, tax ids and invoice (portal.checkout.collected_details).
    payer_email: Mapped[str | None] = mapped_column(String(320), index=True)
    checkout_details: Mapped[dict | None] = mapped_column(JSON)
    locale: Mapped[str | None] = mapped_column(String(16))
    platform_data: Mapped[dict] = mapped_column(JSON, default=dict)

    stripe_session_id: Mapped[str | None] = mapped_column(String(255), index=True)
    stripe_session_url: Mapped[str | None] = mapped_column(Text)
    stripe_session_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    session_attempt: Mapped[int] = mapped_column(Integer, default=0)
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255), index=True)
    amount_paid_minor: Mapped[int | None] = mapped_column(BigInteger)
    tax_paid_minor: Mapped[int | None] = mapped_column(BigInteger)
    amount_refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    disputed: Mapped[bool] = mapped_column(default=False)

    redirect_url: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)

    # A merchant order (portal/api) belongs to the API key that created it, and may be authorised
    # now and captured later; the other platforms leave these empty.
    merchant_key_id: Mapped[int | None] = mapped_column(
        ForeignKey("api_keys.id", ondelete="SET NULL"), index=True
    )
    capture_method: Mapped[str | None] = mapped_column(String(16))  # automatic | manual
    amount_authorized_minor: Mapped[int | None] = mapped_column(BigInteger)  # held, not captured
    amount_captured_minor: Mapped[int | None] = mapped_column(BigInteger)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    paid_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    fulfilled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    events: Mapped[list[OrderEvent]] = relationship(
        back_populates="order", order_by="OrderEvent.id", lazy="select"
    )

    @property
    def total_minor(self) -> int:
        """What the learner is asked to pay on the review page (tax included when known)."""
        return self.amount_minor + (self.tax_minor or 0)

    @property
    def is_paid(self) -> bool:
        return self.state in PAID_STATES


class OrderEvent(Base):
    """Append-only timeline: external calls, webhooks, state changes, operator actions."""

    __tablename__ = "order_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(24))  # state | http | webhook | job | alert | note
    message: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    duration_ms: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    order: Mapped[Order] = relationship(back_populates="events")


class JobState(enum.StrEnum):
    QUEUED = "queued"
    DONE = "done"
    DEAD = "dead"  # gave up: an operator was alerted


class Job(Base):
    """The outbox: work that must eventually happen, claimed under a lease."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "state", "run_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    # One live job per purpose: "fulfil:42" can be queued only once.
    dedupe_key: Mapped[str] = mapped_column(String(190), unique=True)
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"))
    payload: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    locked_by: Mapped[str | None] = mapped_column(String(120))
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class StripeEvent(Base):
    """Stripe event ids already handled: a replayed delivery is a no-op."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(120))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Refund(Base):
    """Money given back on an order, one row per Stripe refund id (or per lost dispute, which
    counts as a full refund): whoever started it (the console, the merchant API, Stripe's
    dashboard, a platform), it is recorded, and reported to the platform, once."""

    __tablename__ = "refunds"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)  # re_... or dp_... (lost)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # succeeded | pending | lost (dispute)
    source: Mapped[str] = mapped_column(String(16))  # console | api | stripe | platform | dispute
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Dispute(Base):
    """A Stripe dispute (chargeback) on an order's payment: opened, then closed won or lost."""

    __tablename__ = "disputes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stripe_id: Mapped[str] = mapped_column(String(255), unique=True)  # dp_...
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    amount_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))  # Stripe's dispute status
    outcome: Mapped[str | None] = mapped_column(String(16))  # won | lost, once closed
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsedToken(Base):
    """JWT ids already accepted (OpenLearning): each `jti` opens one order, once."""

    __tablename__ = "used_tokens"

    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    issuer: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.id", ondelete="SET NULL"))
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- the operator console (portal/admin) ----------------------------------------------------------

# Dashboard and search filters count and sort orders by these timestamps.
Index("ix_orders_created_at", Order.created_at)
Index("ix_orders_paid_at", Order.paid_at)
Index("ix_orders_fulfilled_at", Order.fulfilled_at)
Index("ix_orders_disputed", Order.disputed)
Index("ix_orders_platform_ref", Order.platform_ref)  # search without the platform
# Learner email search is case-insensitive: index what it compares.
Index("ix_orders_customer_email_lower", func.lower(Order.customer_email))
# Error rates per platform read the recent "http" events.
Index("ix_order_events_kind_created", OrderEvent.kind, OrderEvent.created_at)


class Role(enum.StrEnum):
    ADMIN = "admin"  # everything: orders, branding, users, settings, the audit log
    OPERATOR = "operator"  # orders and their actions
    MARKETER = "marketer"  # brands and templates only


class User(Base):
    """Someone who signs in to the operator console: a local password, single sign-on, or both."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)  # stored lower-case
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    # "<issuer>|<subject>" of the single sign-on identity this user signed in with.
    oidc_subject: Mapped[str | None] = mapped_column(String(500), unique=True)
    active: Mapped[bool] = mapped_column(default=True)
    # Bumped on sign-out and password change: every session cookie issued before is refused.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class AuditEntry(Base):
    """Who did what, when, from where: every sign-in (and failed one) and every console action."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_created", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    actor: Mapped[str] = mapped_column(String(320))  # the email, kept if the user is removed
    action: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # ok | refused | failed | denied
    target: Mapped[str | None] = mapped_column(String(190))  # e.g. an order reference
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    detail: Mapped[dict] = mapped_column(JSON, default=dict)
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(300))


class LoginAttempt(Base):
    """Password sign-ins, counted per account and per address to lock out guessing. In the
    database, so the count holds across every gunicorn worker and host."""

    __tablename__ = "login_attempts"
    __table_args__ = (
        Index("ix_login_attempts_email_created", "email", "created_at"),
        Index("ix_login_attempts_ip_created", "ip_address", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320))
    ip_address: Mapped[str] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- the merchant API (portal/api) and pay-by-link -----------------------------------------------


class ApiKey(Base):
    """A merchant's secret API key. Only a SHA-256 of the key is stored (the key is 32 random
    bytes, so a fast hash is enough); the key itself is shown once, when it is made."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    prefix: Mapped[str] = mapped_column(String(24), unique=True)  # shown in lists: sk_test_Ab3d
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    live: Mapped[bool] = mapped_column(default=False)
    brand_name: Mapped[str | None] = mapped_column(String(120))
    allowed_hosts: Mapped[list] = mapped_column(JSON, default=list)  # success/cancel URL hosts
    # Default Stripe Checkout options for this key's sessions (portal.api.checkout_options).
    checkout_options: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookEndpoint(Base):
    """Where a key's events go; each endpoint signs with its own secret."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True
    )
    url: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(String(120))  # whsec_...: the receiver needs it in clear
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """The delivery log: one event to one endpoint, its body, and how delivering it went."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
        Index("ix_webhook_deliveries_created", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    event_id: Mapped[str] = mapped_column(String(64))
    event_type: Mapped[str] = mapped_column(String(40))
    endpoint_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    order_id: Mapped[int | None] = mapped_column(
        ForeignKey("orders.id", ondelete="SET NULL"), index=True
    )
    body: Mapped[str] = mapped_column(Text)  # the exact JSON sent (and signed) every attempt
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class IdempotencyRecord(Base):
    """The first answer to a POST under an `Idempotency-Key`, per API key; a retry gets it back."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("api_key_id", "key", name="uq_idempotency_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    api_key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[int | None] = mapped_column(Integer)  # None while the first request runs
    response: Mapped[dict | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# --- brands and marketer templates (portal/branding) ----------------------------------------------


class Brand(Base):
    """How the learner pages look for one merchant academy: name, logo, colours, font stack,
    support address, legal links and a few short copy blocks (plain text, always escaped)."""

    __tablename__ = "brands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    is_default: Mapped[bool] = mapped_column(default=False)
    logo: Mapped[bytes | None] = mapped_column(LargeBinary)
    logo_type: Mapped[str | None] = mapped_column(String(32))  # image/png | image/svg+xml
    colour_primary: Mapped[str] = mapped_column(String(7))  # #rrggbb
    colour_text: Mapped[str] = mapped_column(String(7))
    colour_background: Mapped[str] = mapped_column(String(7))
    colour_accent: Mapped[str] = mapped_column(String(7))
    font_stack: Mapped[str] = mapped_column(String(32), default="system")
    support_email: Mapped[str | None] = mapped_column(String(320))
    terms_url: Mapped[str | None] = mapped_column(Text)
    privacy_url: Mapped[str | None] = mapped_column(Text)
    copy_blocks: Mapped[dict] = mapped_column(JSON, default=dict)
    # Bumped on every save: the stylesheet and logo URLs carry it, so caches can keep them forever.
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class BrandVersion(Base):
    """One saved version of a brand's settings (issue 23): a draft until published, when its
    values are copied onto the brand. Append-only, so the history says who changed what and
    when, and an earlier version can be published again (a rollback)."""

    __tablename__ = "brand_versions"
    __table_args__ = (UniqueConstraint("brand_id", "version", name="uq_brand_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # The checked fields (name, colours, font stack, support email, links, copy, is_default).
    data: Mapped[dict] = mapped_column(JSON)
    logo: Mapped[bytes | None] = mapped_column(LargeBinary)
    logo_type: Mapped[str | None] = mapped_column(String(32))
    author: Mapped[str] = mapped_column(String(320))
    note: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BrandAssignment(Base):
    """Which brand a platform source gets: ("skilljar", "*"), ("openlearning", institution id),
    ("merchant", API key id). "*" is the platform's fallback."""

    __tablename__ = "brand_assignments"
    __table_args__ = (UniqueConstraint("platform", "source_key", name="uq_brand_assignment"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    source_key: Mapped[str] = mapped_column(String(190))
    brand_id: Mapped[int] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class TemplateOverride(Base):
    """One saved version of a marketer's override of a learner-facing template. Versions are
    append-only; at most one version per template and brand scope (one brand, or every brand)
    is published (live)."""

    __tablename__ = "template_overrides"
    __table_args__ = (
        UniqueConstraint("template_name", "version", name="uq_template_override_version"),
        Index("ix_template_overrides_live", "published", "template_name"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    template_name: Mapped[str] = mapped_column(String(190))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(Text)
    author: Mapped[str] = mapped_column(String(320))
    note: Mapped[str | None] = mapped_column(String(300))
    # The brand the version applies to; None: every brand without one of its own (issue 23).
    brand_id: Mapped[int | None] = mapped_column(
        ForeignKey("brands.id", ondelete="CASCADE"), index=True
    )
    published: Mapped[bool] = mapped_column(default=False)
    published_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # A live render of this version that failed (the default was shown instead).
    failure_count: Mapped[int] = mapped_column(Integer, default=0)
    last_failure: Mapped[str | None] = mapped_column(Text)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
