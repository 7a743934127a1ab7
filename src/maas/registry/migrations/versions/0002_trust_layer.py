"""trust layer: key limits and allowlists, usage records, audit log

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 19:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("owner", sa.String(length=128), nullable=True))
        batch.add_column(
            sa.Column("models", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("rpm_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("tpm_limit", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("monthly_token_quota", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("monthly_request_quota", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("pii_policy", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("rotated_from", sa.Integer(), nullable=True))
    op.create_table(
        "usage_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("route", sa.String(length=32), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("compute_seconds", sa.Float(), nullable=False),
        sa.Column("queue_seconds", sa.Float(), nullable=False),
        sa.Column("bytes_in", sa.BigInteger(), nullable=False),
        sa.Column("bytes_out", sa.BigInteger(), nullable=False),
        sa.Column("energy_joules", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_usage_key_ts", "usage_records", ["key_id", "ts"], unique=False)
    op.create_index("ix_usage_model_ts", "usage_records", ["model", "ts"], unique=False)
    op.create_index(op.f("ix_usage_records_ts"), "usage_records", ["ts"], unique=False)
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=160), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("hash"),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_index(op.f("ix_usage_records_ts"), table_name="usage_records")
    op.drop_index("ix_usage_model_ts", table_name="usage_records")
    op.drop_index("ix_usage_key_ts", table_name="usage_records")
    op.drop_table("usage_records")
    with op.batch_alter_table("api_keys") as batch:
        for column in (
            "rotated_from",
            "pii_policy",
            "monthly_request_quota",
            "monthly_token_quota",
            "tpm_limit",
            "rpm_limit",
            "expires_at",
            "models",
            "owner",
        ):
            batch.drop_column(column)
