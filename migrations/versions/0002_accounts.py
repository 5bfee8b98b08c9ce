"""accounts and the Stripe connection: encrypted tokens, consent evidence, OAuth states

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CONSENT_COLUMNS = (
    ("consent_affirmed_by", sa.String(length=255)),
    ("consent_affirmed_at", sa.DateTime(timezone=True)),
    ("consent_client_ip", sa.String(length=64)),
    ("consent_user_agent", sa.Text()),
)
_ACCOUNT_COLUMNS = (
    ("cc_access_token_encrypted", sa.Text()),
    ("cc_refresh_token_encrypted", sa.Text()),
    ("cc_token_expires_at", sa.DateTime(timezone=True)),
    ("cc_token_refreshed_at", sa.DateTime(timezone=True)),
    ("cc_token_error", sa.Text()),
)
_CONNECTION_COLUMNS = (
    ("scope", sa.String(length=64)),
    ("access_token_encrypted", sa.Text()),
    ("refresh_token_encrypted", sa.Text()),
    ("token_expires_at", sa.DateTime(timezone=True)),
    ("token_refreshed_at", sa.DateTime(timezone=True)),
    ("error", sa.Text()),
    *_CONSENT_COLUMNS,
)


def upgrade() -> None:
    for name, type_ in _ACCOUNT_COLUMNS:
        op.add_column("accounts", sa.Column(name, type_, nullable=True))
    for name, type_ in _CONNECTION_COLUMNS:
        op.add_column("stripe_connections", sa.Column(name, type_, nullable=True))
    op.create_table(
        "oauth_states",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("return_url", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        *(sa.Column(name, type_, nullable=True) for name, type_ in _CONSENT_COLUMNS),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_oauth_states_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oauth_states")),
    )
    op.create_index(
        op.f("ix_oauth_states_account_id"), "oauth_states", ["account_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_oauth_states_account_id"), table_name="oauth_states")
    op.drop_table("oauth_states")
    for name, _ in reversed(_CONNECTION_COLUMNS):
        op.drop_column("stripe_connections", name)
    for name, _ in reversed(_ACCOUNT_COLUMNS):
        op.drop_column("accounts", name)
