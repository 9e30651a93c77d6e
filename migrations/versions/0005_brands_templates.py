"""brands, brand assignments per platform source, and marketers' template overrides with their
version history

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 05:00:00.000000
"""

import sqlalchemy as sa
from alembic import op


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "brands",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("logo", sa.LargeBinary(), nullable=True),
        sa.Column("logo_type", sa.String(length=32), nullable=True),
        sa.Column("colour_primary", sa.String(length=7), nullable=False),
        sa.Column("colour_text", sa.String(length=7), nullable=False),
        sa.Column("colour_background", sa.String(length=7), nullable=False),
        sa.Column("colour_accent", sa.String(length=7), nullable=False),
        sa.Column("font_stack", sa.String(length=32), nullable=False),
        sa.Column("support_email", sa.String(length=320), nullable=True),
        sa.Column("terms_url", sa.Text(), nullable=True),
        sa.Column("privacy_url", sa.Text(), nullable=True),
        sa.Column("copy_blocks", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "brand_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("source_key", sa.String(length=190), nullable=False),
        sa.Column("brand_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("platform", "source_key", name="uq_brand_assignment"),
    )
    op.create_index("ix_brand_assignments_brand_id", "brand_assignments", ["brand_id"])
    op.create_table(
        "template_overrides",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template_name", sa.String(length=190), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("author", sa.String(length=320), nullable=False),
        sa.Column("note", sa.String(length=300), nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        sa.Column("last_failure", sa.Text(), nullable=True),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("template_name", "version", name="uq_template_override_version"),
    )
    op.create_index(
        "ix_template_overrides_live", "template_overrides", ["published", "template_name"]
    )


def downgrade() -> None:
    op.drop_index("ix_template_overrides_live", table_name="template_overrides")
    op.drop_table("template_overrides")
    op.drop_index("ix_brand_assignments_brand_id", table_name="brand_assignments")
    op.drop_table("brand_assignments")
    op.drop_table("brands")
