"""brand_versions: drafts and history of brand settings; template_overrides.brand_id: an
override for one brand (issue 23)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 04:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "brand_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("brand_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("logo", sa.LargeBinary(), nullable=True),
        sa.Column("logo_type", sa.String(length=32), nullable=True),
        sa.Column("author", sa.String(length=320), nullable=False),
        sa.Column("note", sa.String(length=300), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("brand_id", "version", name="uq_brand_version"),
    )
    op.create_index("ix_brand_versions_brand_id", "brand_versions", ["brand_id"])
    with op.batch_alter_table("template_overrides") as batch:
        batch.add_column(sa.Column("brand_id", sa.Integer(), nullable=True))
        batch.create_foreign_key(
            "fk_template_overrides_brand_id", "brands", ["brand_id"], ["id"], ondelete="CASCADE"
        )
        batch.create_index("ix_template_overrides_brand_id", ["brand_id"])


def downgrade() -> None:
    with op.batch_alter_table("template_overrides") as batch:
        batch.drop_index("ix_template_overrides_brand_id")
        batch.drop_constraint("fk_template_overrides_brand_id", type_="foreignkey")
        batch.drop_column("brand_id")
    op.drop_index("ix_brand_versions_brand_id", table_name="brand_versions")
    op.drop_table("brand_versions")
