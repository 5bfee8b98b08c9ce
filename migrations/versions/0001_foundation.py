"""foundation: accounts, connections, stripe events

Revision ID: 0001
Revises:
Create Date: 2026-11-26 18:14:33.205334
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("owner_email", sa.String(length=320), nullable=False),
        sa.Column("postal_address", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("account", sa.String(length=255), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("api_version", sa.String(length=64), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("state", sa.String(length=16), server_default="received", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("ignored_reason", sa.String(length=64), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    op.create_index(
        "ix_stripe_events_pending",
        "stripe_events",
        ["received_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('received', 'retrying')"),
    )
    op.create_index(
        "ix_stripe_events_state_account", "stripe_events", ["state", "account"], unique=False
    )
    op.create_table(
        "stripe_connections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_account_id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="connected", nullable=False),
        sa.Column(
            "connected_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_stripe_connections_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_connections")),
    )
    op.create_index(
        "uq_stripe_connections_active_account",
        "stripe_connections",
        ["account_id"],
        unique=True,
        postgresql_where=sa.text("status = 'connected'"),
    )
    op.create_index(
        "uq_stripe_connections_active_stripe_account",
        "stripe_connections",
        ["stripe_account_id"],
        unique=True,
        postgresql_where=sa.text("status = 'connected'"),
    )


def downgrade() -> None:
    op.drop_index(
        "uq_stripe_connections_active_stripe_account",
        table_name="stripe_connections",
        postgresql_where=sa.text("status = 'connected'"),
    )
    op.drop_index(
        "uq_stripe_connections_active_account",
        table_name="stripe_connections",
        postgresql_where=sa.text("status = 'connected'"),
    )
    op.drop_table("stripe_connections")
    op.drop_index("ix_stripe_events_state_account", table_name="stripe_events")
    op.drop_index(
        "ix_stripe_events_pending",
        table_name="stripe_events",
        postgresql_where=sa.text("state IN ('received', 'retrying')"),
    )
    op.drop_table("stripe_events")
    op.drop_table("accounts")
