"""operator console: users, audit log, login attempts; indexes for search and the dashboard

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 02:11:43.718462
"""

import sqlalchemy as sa
from alembic import op


revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("oidc_subject", sa.String(length=500), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("session_epoch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("email"),
        sa.UniqueConstraint("oidc_subject"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=190), nullable=True),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=300), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index("ix_audit_log_action", ["action"], unique=False)
        batch_op.create_index("ix_audit_log_created", ["created_at"], unique=False)
        batch_op.create_index("ix_audit_log_order_id", ["order_id"], unique=False)
        batch_op.create_index("ix_audit_log_user_id", ["user_id"], unique=False)

    op.create_table(
        "login_attempts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("ip_address", sa.String(length=64), nullable=False),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_login_attempts_email_created", ["email", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_login_attempts_ip_created", ["ip_address", "created_at"], unique=False
        )

    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.create_index("ix_order_events_kind_created", ["kind", "created_at"], unique=False)

    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.create_index("ix_orders_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_orders_paid_at", ["paid_at"], unique=False)
        batch_op.create_index("ix_orders_fulfilled_at", ["fulfilled_at"], unique=False)
        batch_op.create_index("ix_orders_disputed", ["disputed"], unique=False)
        batch_op.create_index("ix_orders_platform_ref", ["platform_ref"], unique=False)
    # An expression index (case-insensitive email search); SQLite and PostgreSQL both have them.
    op.create_index(
        "ix_orders_customer_email_lower", "orders", [sa.text("lower(customer_email)")]
    )


def downgrade() -> None:
    op.drop_index("ix_orders_customer_email_lower", table_name="orders")
    with op.batch_alter_table("orders", schema=None) as batch_op:
        batch_op.drop_index("ix_orders_platform_ref")
        batch_op.drop_index("ix_orders_disputed")
        batch_op.drop_index("ix_orders_fulfilled_at")
        batch_op.drop_index("ix_orders_paid_at")
        batch_op.drop_index("ix_orders_created_at")

    with op.batch_alter_table("order_events", schema=None) as batch_op:
        batch_op.drop_index("ix_order_events_kind_created")

    with op.batch_alter_table("login_attempts", schema=None) as batch_op:
        batch_op.drop_index("ix_login_attempts_ip_created")
        batch_op.drop_index("ix_login_attempts_email_created")
    op.drop_table("login_attempts")

    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_log_user_id")
        batch_op.drop_index("ix_audit_log_order_id")
        batch_op.drop_index("ix_audit_log_created")
        batch_op.drop_index("ix_audit_log_action")
    op.drop_table("audit_log")
    op.drop_table("users")
