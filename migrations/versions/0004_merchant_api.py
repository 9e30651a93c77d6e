"""merchant API: API keys, webhook endpoints and their delivery log, idempotency records; orders
gain the key that created them, the capture method and the authorised and captured amounts

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 03:30:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("prefix", sa.String(length=24), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("live", sa.Boolean(), nullable=False),
        sa.Column("brand_name", sa.String(length=120), nullable=True),
        sa.Column("allowed_hosts", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("prefix"),
        sa.UniqueConstraint("secret_hash"),
    )
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.String(length=120), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_endpoints_api_key_id", "webhook_endpoints", ["api_key_id"])
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("event_type", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.Integer(), nullable=False),
        sa.Column("order_id", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["webhook_endpoints.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", "endpoint_id", name="uq_webhook_deliveries_event_endpoint"),
    )
    op.create_index("ix_webhook_deliveries_created", "webhook_deliveries", ["created_at"])
    op.create_index("ix_webhook_deliveries_endpoint_id", "webhook_deliveries", ["endpoint_id"])
    op.create_index("ix_webhook_deliveries_order_id", "webhook_deliveries", ["order_id"])
    op.create_table(
        "idempotency_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("api_key_id", "key", name="uq_idempotency_key"),
    )
    # Plain ADD COLUMN on every backend, no table rebuild: on SQLite a batch copy of `orders`
    # would drop the table that events and jobs reference. SQLite takes the foreign key inline
    # (allowed for a nullable column); PostgreSQL as a named constraint.
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE orders ADD COLUMN merchant_key_id INTEGER "
            "REFERENCES api_keys (id) ON DELETE SET NULL"
        )
    else:
        op.add_column("orders", sa.Column("merchant_key_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            "fk_orders_merchant_key_id",
            "orders",
            "api_keys",
            ["merchant_key_id"],
            ["id"],
            ondelete="SET NULL",
        )
    op.add_column("orders", sa.Column("capture_method", sa.String(length=16), nullable=True))
    op.add_column("orders", sa.Column("amount_authorized_minor", sa.BigInteger(), nullable=True))
    op.add_column("orders", sa.Column("amount_captured_minor", sa.BigInteger(), nullable=True))
    op.create_index("ix_orders_merchant_key_id", "orders", ["merchant_key_id"])


def downgrade() -> None:
    op.drop_index("ix_orders_merchant_key_id", table_name="orders")
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint("fk_orders_merchant_key_id", "orders", type_="foreignkey")
    with op.batch_alter_table("orders") as batch_op:
        batch_op.drop_column("amount_captured_minor")
        batch_op.drop_column("amount_authorized_minor")
        batch_op.drop_column("capture_method")
        batch_op.drop_column("merchant_key_id")
    op.drop_table("idempotency_records")
    op.drop_index("ix_webhook_deliveries_order_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_endpoint_id", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_created", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_webhook_endpoints_api_key_id", table_name="webhook_endpoints")
    op.drop_table("webhook_endpoints")
    op.drop_table("api_keys")
