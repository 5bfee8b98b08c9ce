"""Platform accounts, their Stripe connections, and the single-use OAuth states between them.

Columns ending in `_encrypted` hold Fernet ciphertext (kit/crypto.py), never a secret in
clear; `info=ENCRYPTED` marks them so `stripesync rotate-keys` re-encrypts every one.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base

# Column info marking Fernet ciphertext; kit/crypto.rotate_encrypted_columns finds it.
ENCRYPTED = {"encrypted": True}


def encrypted_column() -> Mapped[str | None]:
    return mapped_column(Text, info=ENCRYPTED)


class Account(Base):
    """A merchant's account on the marketing platform (the platform's own id)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    owner_email: Mapped[str] = mapped_column(String(320))
    postal_address: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    # The account's Constant Contact OAuth pair (rotating refresh token), refreshed by us.
    cc_access_token_encrypted: Mapped[str | None] = encrypted_column()
    cc_refresh_token_encrypted: Mapped[str | None] = encrypted_column()
    cc_token_expires_at: Mapped[datetime | None]
    cc_token_refreshed_at: Mapped[datetime | None]
    cc_token_error: Mapped[str | None] = mapped_column(Text)


class ConnectionStatus(enum.StrEnum):
    PENDING = "pending"
    CONNECTED = "connected"
    REVOKED = "revoked"
    ERROR = "error"


class ConnectionMode(enum.StrEnum):
    OPTIN = "optin"  # "Get permission for me"
    DIRECT = "direct"  # "I will get permission on my own"


class StripeConnection(Base):
    """One OAuth connection of a platform account to a Stripe account.

    Revoked connections stay as history (their tokens wiped); at most one connection per
    platform account and per Stripe account is active at a time (partial unique indexes).
    """

    __tablename__ = "stripe_connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    stripe_account_id: Mapped[str] = mapped_column(String(255))
    livemode: Mapped[bool]
    mode: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default=ConnectionStatus.CONNECTED.value)
    connected_at: Mapped[datetime] = mapped_column(server_default=func.now())
    revoked_at: Mapped[datetime | None]
    last_event_at: Mapped[datetime | None]

    scope: Mapped[str | None] = mapped_column(String(64))
    access_token_encrypted: Mapped[str | None] = encrypted_column()
    refresh_token_encrypted: Mapped[str | None] = encrypted_column()
    # Null for classic Connect tokens (they do not expire); set when the grant had expires_in.
    token_expires_at: Mapped[datetime | None]
    token_refreshed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)

    # Direct mode: the merchant's "Yes, I have prior consent", kept as evidence.
    consent_affirmed_by: Mapped[str | None] = mapped_column(String(255))
    consent_affirmed_at: Mapped[datetime | None]
    consent_client_ip: Mapped[str | None] = mapped_column(String(64))
    consent_user_agent: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "uq_stripe_connections_active_stripe_account",
            "stripe_account_id",
            unique=True,
            postgresql_where=text("status = 'connected'"),
        ),
        Index(
            "uq_stripe_connections_active_account",
            "account_id",
            unique=True,
            postgresql_where=text("status = 'connected'"),
        ),
    )


class OAuthState(Base):
    """One `POST /stripe/connect`: the server side of the signed `state` it handed out.

    The state is single-use (`used_at` is set once, under a row lock) and carries what the
    callback needs: mode, return URL and the consent evidence of direct mode.
    """

    __tablename__ = "oauth_states"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # random nonce
    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), index=True
    )
    mode: Mapped[str] = mapped_column(String(16))
    return_url: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    # "connected" or the error reason the merchant was sent back with.
    outcome: Mapped[str | None] = mapped_column(String(64))

    consent_affirmed_by: Mapped[str | None] = mapped_column(String(255))
    consent_affirmed_at: Mapped[datetime | None]
    consent_client_ip: Mapped[str | None] = mapped_column(String(64))
    consent_user_agent: Mapped[str | None] = mapped_column(Text)
