"""orders: NOTIFY portal_orders with the reference of every updated or deleted order, as the
change commits (PostgreSQL only; portal.order_changes listens)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 22:20:00.000000
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
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


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS orders_changed ON orders")
    op.execute("DROP FUNCTION IF EXISTS portal_order_changed()")
