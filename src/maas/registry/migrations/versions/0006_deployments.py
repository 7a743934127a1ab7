"""deployments: per-version serving settings (loaded/pinned everywhere, Ray replicas)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("loaded", sa.Boolean(), nullable=True),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("replicas", sa.Integer(), nullable=True),
        sa.Column("min_replicas", sa.Integer(), nullable=True),
        sa.Column("max_replicas", sa.Integer(), nullable=True),
        sa.Column("target_ongoing_requests", sa.Float(), nullable=True),
        sa.Column("num_cpus", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=160), nullable=True),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("version_id"),
    )


def downgrade() -> None:
    op.drop_table("deployments")
