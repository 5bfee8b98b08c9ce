"""Opt-in: the merchant's email settings, the versions of the email that went out, and the
one email each person gets (mode `optin`).

`optin_emails` holds at most one row per (account, email hash) EVER: the unique constraint,
not a check, is what keeps a second email from being sent across duplicate events, several
customer ids, re-imports, resyncs, reconnects and concurrent workers. Only the hash of the
address and the hash of the link token are stored.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class OptinEmailState(enum.StrEnum):
    QUEUED = "queued"  # waiting for (another) send attempt
    SENDING = "sending"  # claimed by a send job; a stale claim goes back to queued
    SENT = "sent"  # accepted by the mail server
    REJECTED = "rejected"  # permanently refused (5xx): never retried
    FAILED = "failed"  # transient failures until the attempts ran out
    CANCELLED = "cancelled"  # the person's consent changed before it went out


class OptinResponse(enum.StrEnum):
    CONFIRMED = "confirmed"
    DECLINED = "declined"


class OptinEmailSettings(Base):
    """What the merchant set for their opt-in email (api.md `/optin-email`)."""

    __tablename__ = "optin_email_settings"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    subject: Mapped[str] = mapped_column(String(200))
    from_name: Mapped[str] = mapped_column(String(100))
    from_email: Mapped[str] = mapped_column(String(320))
    reply_to: Mapped[str] = mapped_column(String(320))
    intro: Mapped[str | None] = mapped_column(Text)
    activated_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class OptinEmailVersion(Base):
    """One distinct email as it went out (everything but the recipient's link), so a
    confirmation can name exactly which text the person agreed to."""

    __tablename__ = "optin_email_versions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the fields below
    template_version: Mapped[str] = mapped_column(String(32))
    merchant_name: Mapped[str] = mapped_column(String(255))
    postal_address: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(String(200))
    from_name: Mapped[str] = mapped_column(String(100))
    from_email: Mapped[str] = mapped_column(String(320))
    reply_to: Mapped[str] = mapped_column(String(320))
    intro: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "digest", name="uq_optin_email_versions_digest"),
    )


class OptinEmail(Base):
    """The one opt-in email of one person: its sending state, its link and the answer."""

    __tablename__ = "optin_emails"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    # Null once the contact is erased: the row stays as the hashed "already asked" record.
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="SET NULL")
    )
    email_hash: Mapped[str] = mapped_column(String(64))  # sha256 of the normalised address
    state: Mapped[str] = mapped_column(String(16), server_default=OptinEmailState.QUEUED.value)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claimed_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    version_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("optin_email_versions.id", ondelete="RESTRICT")
    )
    token_hash: Mapped[str | None] = mapped_column(String(64))  # sha256 of the link token
    message_id: Mapped[str | None] = mapped_column(String(255))
    sent_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]  # the link's end: sent_at + 30 days
    response: Mapped[str | None] = mapped_column(String(16))  # OptinResponse
    responded_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "email_hash", name="uq_optin_emails_account_email"),
        Index("uq_optin_emails_token_hash", "token_hash", unique=True),
        Index("ix_optin_emails_contact_id", "contact_id"),
        # The sweeper's work list: rows that still need a send attempt.
        Index(
            "ix_optin_emails_unsent",
            "next_attempt_at",
            postgresql_where=text("state IN ('queued', 'sending')"),
        ),
    )
