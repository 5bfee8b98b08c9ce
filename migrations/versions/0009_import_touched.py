"""contacts an import touched, finished in bulk once its lists are read

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_touched",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=False),
        sa.Column("changed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_import_touched_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "contact_id", name="pk_import_touched"),
    )


def downgrade() -> None:
    op.drop_table("import_touched")
