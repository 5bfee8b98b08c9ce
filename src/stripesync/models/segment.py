"""Segments (segments.md): built-in and custom rules over contacts' payment activity, each
contact's memberships (its desired platform lists), per-account thresholds, and the outbox
of automation triggers."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class SegmentKind(enum.StrEnum):
    BUILTIN = "builtin"
    CUSTOM = "custom"


class Segment(Base):
    """One segment of an account, mirrored as one contact list on the platform.

    Built-ins have a `key` (segments.md) and a rule derived from the account's thresholds;
    custom segments have no key. A deleted custom segment stays as a tombstone
    (`deleted_at`) while it still has a platform list, so the sync engine can delete that
    list and then the row (`segments.service.forget_segment`).
    """

    __tablename__ = "segments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    key: Mapped[str | None] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(16))
    rule: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # null: every permitted contact
    platform_list_id: Mapped[str | None] = mapped_column(String(255))  # set by the sync engine
    member_count: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    deleted_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        # NULL keys (custom segments) never conflict; built-ins are created with ON CONFLICT.
        UniqueConstraint("account_id", "key", name="uq_segments_account_key"),
        # List names are unique on the platform, so live segment names are unique here.
        Index(
            "uq_segments_account_name_live",
            "account_id",
            "name",
            unique=True,
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )


class ContactSegment(Base):
    """A contact's membership of a segment: the lists the sync engine puts that contact on.

    Written only by the set-based recompute (segments/membership.py), which bumps the
    contact's version whenever its memberships change.
    """

    __tablename__ = "contact_segments"

    contact_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    segment_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("segments.id", ondelete="CASCADE"), primary_key=True
    )
    entered_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # Members pages and exact counts walk one segment in contact id order.
        Index("ix_contact_segments_segment_contact", "segment_id", "contact_id"),
    )


class SegmentSettings(Base):
    """An account's thresholds for the built-ins; no row means the defaults of segments.md."""

    __tablename__ = "segment_settings"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    recent_days: Mapped[int]
    lapsed_days: Mapped[int]
    refund_days: Mapped[int]
    high_value_min: Mapped[dict[str, int]] = mapped_column(JSONB)  # {"usd": 50000}
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())


class ContactActivitySnapshot(Base):
    """The activity times last seen for a contact, so the contacts-changed hook can tell a
    new purchase, failure or refund from a replay without reading the payments."""

    __tablename__ = "contact_activity_snapshots"

    contact_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    last_purchase_at: Mapped[datetime | None]
    last_failed_at: Mapped[datetime | None]
    last_refund_at: Mapped[datetime | None]


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # gave up after the bounded number of tries


class AutomationOutbox(Base):
    """Automation triggers (api.md), stored in the transaction that caused them and posted
    at least once by the worker; `message_id` is the Standard Webhooks `webhook-id`, the
    same on every retry so receivers can drop duplicates."""

    __tablename__ = "automation_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    message_id: Mapped[str] = mapped_column(String(64), unique=True)
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(String(16), server_default=OutboxState.PENDING.value)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    delivered_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_automation_outbox_due",
            "next_attempt_at",
            postgresql_where=text("state = 'pending'"),
        ),
    )
