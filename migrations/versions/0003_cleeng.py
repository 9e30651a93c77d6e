"""Cleeng payment connector: Stripe Customers per Cleeng customer, payments reported to Cleeng

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 03:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cleeng_customers",
        sa.Column("customer_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("customer_id"),
        sa.UniqueConstraint("stripe_customer_id"),
    )
    op.create_table(
        "cleeng_payments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("event_key", sa.String(length=190), nullable=True),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("cleeng_order_id", sa.String(length=64), nullable=True),
        sa.Column("cleeng_payment_id", sa.String(length=64), nullable=True),
        sa.Column("customer_id", sa.String(length=64), nullable=True),
        sa.Column("subscription_id", sa.String(length=64), nullable=True),
        sa.Column("period", sa.String(length=64), nullable=True),
        sa.Column("renewal_key", sa.String(length=190), nullable=True),
        sa.Column("payment_details_id", sa.String(length=64), nullable=True),
        sa.Column("stripe_payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_payment_method_id", sa.String(length=255), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("rejected_reason", sa.Text(), nullable=True),
        sa.Column("amount_refunded_minor", sa.BigInteger(), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("cleeng_payment_id"),
        sa.UniqueConstraint("event_key"),
        sa.UniqueConstraint("renewal_key"),
    )
    with op.batch_alter_table("cleeng_payments", schema=None) as batch_op:
        batch_op.create_index("ix_cleeng_payments_order_id", ["order_id"], unique=False)
        batch_op.create_index(
            "ix_cleeng_payments_subscription_id", ["subscription_id"], unique=False
        )
        batch_op.create_index(
            "ix_cleeng_payments_payment_details_id", ["payment_details_id"], unique=False
        )
        batch_op.create_index(
            "ix_cleeng_payments_stripe_payment_intent_id",
            ["stripe_payment_intent_id"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("cleeng_payments", schema=None) as batch_op:
        batch_op.drop_index("ix_cleeng_payments_stripe_payment_intent_id")
        batch_op.drop_index("ix_cleeng_payments_payment_details_id")
        batch_op.drop_index("ix_cleeng_payments_subscription_id")
        batch_op.drop_index("ix_cleeng_payments_order_id")
    op.drop_table("cleeng_payments")
    op.drop_table("cleeng_customers")
