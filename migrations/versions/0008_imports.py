"""historical import jobs and checkpoints

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)
EMPTY = sa.text("'{}'::jsonb")
ACTIVE_IMPORT = sa.text("state IN ('queued', 'running') AND kind IN ('import', 'resync')")
NOTICE_PENDING = sa.text("notice_state = 'pending'")


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("connection_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("progress", postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column("report", postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("created_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("lease_token", sa.String(length=32), nullable=True),
        sa.Column("lease_until", TS, nullable=True),
        sa.Column("notice_state", sa.String(length=16), server_default="none", nullable=False),
        sa.Column("notice_attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("notice_sent_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name="fk_jobs_account_id_accounts", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["stripe_connections.id"],
            name="fk_jobs_connection_id_stripe_connections",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    op.create_index(
        "ix_jobs_account_id_created_at", "jobs", ["account_id", "created_at", "id"], unique=False
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at", "id"], unique=False)
    op.create_index(
        "uq_jobs_active_import",
        "jobs",
        ["connection_id"],
        unique=True,
        postgresql_where=ACTIVE_IMPORT,
    )
    op.create_index(
        "ix_jobs_notice_pending", "jobs", ["id"], unique=False, postgresql_where=NOTICE_PENDING
    )
    op.create_table(
        "import_windows",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("resource", sa.String(length=32), nullable=False),
        sa.Column("created_gte", sa.BigInteger(), nullable=False),
        sa.Column("created_lt", sa.BigInteger(), nullable=False),
        sa.Column("cursor", sa.String(length=255), nullable=True),
        sa.Column("oldest_created", sa.BigInteger(), nullable=True),
        sa.Column("objects", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("pages", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("done", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("counts", postgresql.JSONB(), server_default=EMPTY, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_import_windows_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_import_windows"),
    )
    op.create_index("ix_import_windows_job_id", "import_windows", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_import_windows_job_id", table_name="import_windows")
    op.drop_table("import_windows")
    op.drop_index("ix_jobs_notice_pending", table_name="jobs", postgresql_where=NOTICE_PENDING)
    op.drop_index("uq_jobs_active_import", table_name="jobs", postgresql_where=ACTIVE_IMPORT)
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_jobs_account_id_created_at", table_name="jobs")
    op.drop_table("jobs")
