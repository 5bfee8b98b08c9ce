"""opt-in: email settings, sent emails, tokens

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "optin_email_settings",
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("from_name", sa.String(length=100), nullable=False),
        sa.Column("from_email", sa.String(length=320), nullable=False),
        sa.Column("reply_to", sa.String(length=320), nullable=False),
        sa.Column("intro", sa.Text(), nullable=True),
        sa.Column("activated_at", TS, nullable=True),
        sa.Column("updated_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_optin_email_settings_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("account_id", name="pk_optin_email_settings"),
    )
    op.create_table(
        "optin_email_versions",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("template_version", sa.String(length=32), nullable=False),
        sa.Column("merchant_name", sa.String(length=255), nullable=False),
        sa.Column("postal_address", sa.Text(), nullable=True),
        sa.Column("subject", sa.String(length=200), nullable=False),
        sa.Column("from_name", sa.String(length=100), nullable=False),
        sa.Column("from_email", sa.String(length=320), nullable=False),
        sa.Column("reply_to", sa.String(length=320), nullable=False),
        sa.Column("intro", sa.Text(), nullable=True),
        sa.Column("created_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_optin_email_versions_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_optin_email_versions"),
        sa.UniqueConstraint("account_id", "digest", name="uq_optin_email_versions_digest"),
    )
    op.create_table(
        "optin_emails",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.BigInteger(), nullable=True),
        sa.Column("email_hash", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), server_default="queued", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.Column("claimed_at", TS, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("version_id", sa.BigInteger(), nullable=True),
        sa.Column("token_hash", sa.String(length=64), nullable=True),
        sa.Column("message_id", sa.String(length=255), nullable=True),
        sa.Column("sent_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("response", sa.String(length=16), nullable=True),
        sa.Column("responded_at", TS, nullable=True),
        sa.Column("created_at", TS, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name="fk_optin_emails_account_id_accounts",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name="fk_optin_emails_contact_id_contacts",
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["version_id"],
            ["optin_email_versions.id"],
            name="fk_optin_emails_version_id_optin_email_versions",
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_optin_emails"),
        sa.UniqueConstraint("account_id", "email_hash", name="uq_optin_emails_account_email"),
    )
    op.create_index("uq_optin_emails_token_hash", "optin_emails", ["token_hash"], unique=True)
    op.create_index("ix_optin_emails_contact_id", "optin_emails", ["contact_id"], unique=False)
    op.create_index(
        "ix_optin_emails_unsent",
        "optin_emails",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("state IN ('queued', 'sending')"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_optin_emails_unsent",
        table_name="optin_emails",
        postgresql_where=sa.text("state IN ('queued', 'sending')"),
    )
    op.drop_index("ix_optin_emails_contact_id", table_name="optin_emails")
    op.drop_index("uq_optin_emails_token_hash", table_name="optin_emails")
    op.drop_table("optin_emails")
    op.drop_table("optin_email_versions")
    op.drop_table("optin_email_settings")
