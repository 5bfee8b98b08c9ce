"""Platform accounts and their Stripe connections."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text, func, text
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class Account(Base):
    """A merchant's account on the marketing platform (the platform's own id)."""

    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    owner_email: Mapped[str] = mapped_column(String(320))
    postal_address: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


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

    Revoked connections stay as history; at most one connection per platform account and
    per Stripe account is active at a time (partial unique indexes below).
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
