"""Stripe events exactly as received: the durable inbox every effect is derived from."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class EventState(enum.StrEnum):
    RECEIVED = "received"  # stored, not yet processed
    RETRYING = "retrying"  # a try failed; another is scheduled at next_attempt_at
    PROCESSED = "processed"
    IGNORED = "ignored"  # unknown account, disconnected, livemode mismatch or unused type
    FAILED = "failed"  # gave up after the bounded number of tries; replayable by operators


PENDING_STATES = (EventState.RECEIVED, EventState.RETRYING)


class StripeEvent(Base):
    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    account: Mapped[str | None] = mapped_column(String(255))
    livemode: Mapped[bool]
    api_version: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[datetime]
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())
    state: Mapped[str] = mapped_column(String(16), server_default=EventState.RECEIVED.value)
    attempts: Mapped[int] = mapped_column(server_default=text("0"))
    last_error: Mapped[str | None] = mapped_column(Text)
    ignored_reason: Mapped[str | None] = mapped_column(String(64))
    next_attempt_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        # The sweeper's and the ops list's scans touch only unfinished or failed events.
        Index(
            "ix_stripe_events_pending",
            "received_at",
            postgresql_where=text("state IN ('received', 'retrying')"),
        ),
        Index("ix_stripe_events_state_account", "state", "account"),
    )
