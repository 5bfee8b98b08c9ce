"""sync engine: platform contact ids, synced versions, lists, custom fields

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("contacts", sa.Column("platform_contact_id", sa.String(length=64), nullable=True))
    op.add_column(
        "contacts",
        sa.Column("synced_version", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.add_column(
        "contacts",
        sa.Column("sync_state", sa.String(length=16), server_default="pending", nullable=False),
    )
    op.add_column("contacts", sa.Column("sync_error", sa.Text(), nullable=True))
    op.add_column("contacts", sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "contacts", sa.Column("sync_deferred_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "contacts",
        sa.Column(
            "synced_lists",
            postgresql.ARRAY(sa.String(length=64)),
            server_default=sa.text("'{}'::varchar[]"),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_contacts_sync_lag",
        "contacts",
        ["account_id", "id"],
        unique=False,
        postgresql_where=sa.text("synced_version < version"),
    )

    op.create_table(
        "platform_custom_fields",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.String(length=32), nullable=False),
        sa.Column("custom_field_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_platform_custom_fields_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", "key", name=op.f("pk_platform_custom_fields")),
    )

    op.create_table(
        "sync_batches",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("activity_id", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=16), server_default="started", nullable=False),
        sa.Column(
            "list_ids",
            postgresql.ARRAY(sa.String(length=64)),
            server_default=sa.text("'{}'::varchar[]"),
            nullable=False,
        ),
        sa.Column(
            "contacts",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "activity_errors",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_sync_batches_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_batches")),
    )
    op.create_index(
        "ix_sync_batches_account_started",
        "sync_batches",
        ["account_id"],
        unique=False,
        postgresql_where=sa.text("state = 'started'"),
    )


def downgrade() -> None:
    op.drop_index("ix_sync_batches_account_started", table_name="sync_batches")
    op.drop_table("sync_batches")
    op.drop_table("platform_custom_fields")
    op.drop_index("ix_contacts_sync_lag", table_name="contacts")
    for column in (
        "synced_lists",
        "sync_deferred_until",
        "synced_at",
        "sync_error",
        "sync_state",
        "synced_version",
        "platform_contact_id",
    ):
        op.drop_column("contacts", column)
