"""orders.payer_email and orders.checkout_details: what Stripe Checkout collected (the payer's
email, and for B2B sessions the billing and shipping addresses, phone, tax ids and invoice);
api_keys.checkout_options: a merchant key's default Checkout options (address collection, tax id
collection, invoice, promotion codes, phone)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 05:00:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("payer_email", sa.String(length=320), nullable=True))
        batch.add_column(sa.Column("checkout_details", sa.JSON(), nullable=True))
    op.create_index("ix_orders_payer_email", "orders", ["payer_email"])
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("checkout_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("checkout_options")
    op.drop_index("ix_orders_payer_email", table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("checkout_details")
        batch.drop_column("payer_email")
