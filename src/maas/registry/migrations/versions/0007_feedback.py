"""feedback: recorded predictions and the labels or scores attached to them

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", sa.String(length=64), nullable=False),
        sa.Column("item", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("task", sa.String(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("output_label", sa.String(length=200), nullable=True),
        sa.Column("output_score", sa.Float(), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=True),
        sa.Column("feedback_label", sa.String(length=200), nullable=True),
        sa.Column("feedback_score", sa.Float(), nullable=True),
        sa.Column("feedback_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("feedback_key_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("prediction_id", "item"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index(
        "ix_predictions_model_version_feedback",
        "predictions",
        ["model", "version", "feedback_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_model_version_feedback", table_name="predictions")
    op.drop_index("ix_predictions_created_at", table_name="predictions")
    op.drop_table("predictions")
