"""shadow_comparisons: how often a shadow version's labels matched the answers callers got

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "shadow_comparisons",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("baseline", sa.Integer(), nullable=False),
        sa.Column("agreed", sa.Integer(), nullable=False),
        sa.Column("compared", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_shadow_comparisons_model_version_ts", "shadow_comparisons", ["model", "version", "ts"]
    )


def downgrade() -> None:
    op.drop_index("ix_shadow_comparisons_model_version_ts", table_name="shadow_comparisons")
    op.drop_table("shadow_comparisons")
