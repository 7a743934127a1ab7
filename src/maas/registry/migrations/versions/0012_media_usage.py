"""media usage: seconds of audio and images made, per usage record (speech and image routes)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 15:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("audio_seconds", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("images", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("images")
        batch.drop_column("audio_seconds")
