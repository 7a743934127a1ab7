"""change_epochs: counters that processes sharing the database poll to drop caches

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 20:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "change_epochs",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # Seeded, so that concurrent first changes update one row instead of racing to insert it.
    op.execute("INSERT INTO change_epochs (name, value) VALUES ('keys', 0)")


def downgrade() -> None:
    op.drop_table("change_epochs")
