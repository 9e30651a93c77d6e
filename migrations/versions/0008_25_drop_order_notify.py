"""orders: drop the NOTIFY trigger and its function (0007); nothing listens any more, and every
learner page reads its order from the database (PostgreSQL only; nothing to do on SQLite)

Revision ID: 0008_25
Revises: 0007
Create Date: 2026-12-07 04:45:00.000000
"""

from alembic import op

revision = "0008_25"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS orders_changed ON orders")
    op.execute("DROP FUNCTION IF EXISTS portal_order_changed()")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        """
        CREATE OR REPLACE FUNCTION portal_order_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM pg_notify('portal_orders', OLD.reference);
            ELSE
                PERFORM pg_notify('portal_orders', NEW.reference);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER orders_changed AFTER UPDATE OR DELETE ON orders "
        "FOR EACH ROW EXECUTE FUNCTION portal_order_changed()"
    )
