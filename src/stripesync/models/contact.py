"""Contacts: one per (account, normalised email), with the payment-activity fields that
segment rules read (segments.md) and a version that is the sync engine's change feed."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class ConsentState(enum.StrEnum):
    NONE = "none"  # nothing asked or given yet
    PENDING = "pending"  # opt-in email sent, no answer
    CONFIRMED = "confirmed"  # explicit: confirmed the opt-in email or consented at checkout
    IMPLIED = "implied"  # direct mode: the merchant affirmed prior consent
    DECLINED = "declined"  # said no: never emailed or imported again
    UNSUBSCRIBED = "unsubscribed"  # left the platform's lists: never re-subscribed by us


# Consent states that allow a contact onto the platform's lists.
PERMITTED_CONSENT = (ConsentState.CONFIRMED, ConsentState.IMPLIED)


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    email: Mapped[str] = mapped_column(String(320))  # normalised: trimmed, lowercased
    name: Mapped[str | None] = mapped_column(Text)
    email_domain: Mapped[str] = mapped_column(String(255))
    country: Mapped[str | None] = mapped_column(String(2))
    consent_state: Mapped[str] = mapped_column(String(16), server_default=ConsentState.NONE.value)

    # Payment activity (segments.md), derived from the contact's stored payments.
    purchase_count: Mapped[int] = mapped_column(server_default=text("0"))
    total_spent: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )  # {"usd": 12345, ...} in minor units
    first_purchase_at: Mapped[datetime | None]
    last_purchase_at: Mapped[datetime | None]
    last_failed_at: Mapped[datetime | None]
    has_failed_since_last_purchase: Mapped[bool] = mapped_column(server_default=text("false"))
    refund_count: Mapped[int] = mapped_column(server_default=text("0"))
    last_refund_at: Mapped[datetime | None]
    customer_created_at: Mapped[datetime | None]
    subscription_status: Mapped[str] = mapped_column(String(16), server_default="none")

    # The change feed: bumped whenever fields, consent, activity or desired lists change.
    version: Mapped[int] = mapped_column(BigInteger, server_default=text("1"))

    # The platform side (sync engine): what was pushed, and how that went.
    platform_contact_id: Mapped[str | None] = mapped_column(String(64))
    synced_version: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    sync_state: Mapped[str] = mapped_column(String(16), server_default="pending")  # SyncState
    sync_error: Mapped[str | None] = mapped_column(Text)
    synced_at: Mapped[datetime | None]
    sync_deferred_until: Mapped[datetime | None]
    # The platform list ids last pushed: removals are these minus the desired ones.
    synced_lists: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), server_default=text("'{}'::varchar[]")
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "email", name="uq_contacts_account_email"),
        Index("ix_contacts_account_id_id", "account_id", "id"),
        # The sync engine's outbox: contacts whose pushed version lags their version.
        Index(
            "ix_contacts_sync_lag",
            "account_id",
            "id",
            postgresql_where=text("synced_version < version"),
        ),
    )
