"""orders.learner_key: one payable order per learner and purchase for platforms that send a new
reference with every attempt (OpenLearning's "Join now")

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 06:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OPEN_STATES = "state IN ('open', 'paying', 'expired')"


def upgrade() -> None:
    with op.batch_alter_table("orders") as batch:
        batch.add_column(sa.Column("learner_key", sa.String(length=64), nullable=True))
    op.create_index("ix_orders_learner_key", "orders", ["learner_key"])
    op.create_index(
        "uq_orders_learner_open",
        "orders",
        ["learner_key"],
        unique=True,
        postgresql_where=sa.text(OPEN_STATES),
        sqlite_where=sa.text(OPEN_STATES),
    )


def downgrade() -> None:
    op.drop_index("uq_orders_learner_open", table_name="orders")
    op.drop_index("ix_orders_learner_key", table_name="orders")
    with op.batch_alter_table("orders") as batch:
        batch.drop_column("learner_key")
