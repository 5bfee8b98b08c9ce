"""What the sync engine keeps about the platform side: each contact's sync columns live on
`contacts` (models/contact.py); here are the account's platform custom fields and the bulk
activities in flight, so a job that dies mid-way resumes instead of starting over."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class SyncState(enum.StrEnum):
    OK = "ok"  # the platform has the contact's version `synced_version`
    PENDING = "pending"  # a newer version waits to be pushed
    ERROR = "error"  # the platform refused it for good: `sync_error` says why
    DEFERRED = "deferred"  # out of daily quota: pushed after `sync_deferred_until`


class CustomFieldKey(enum.StrEnum):
    LIFETIME_SPEND = "lifetime_spend"
    PURCHASE_COUNT = "purchase_count"
    LAST_PURCHASE_DATE = "last_purchase_date"


class PlatformCustomField(Base):
    """One of our custom fields as created on the account's platform (once per account)."""

    __tablename__ = "platform_custom_fields"

    account_id: Mapped[str] = mapped_column(
        ForeignKey("accounts.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(32), primary_key=True)  # CustomFieldKey
    custom_field_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100))  # `cf:<name>` in contacts_json_import
    label: Mapped[str] = mapped_column(String(100))
    type: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class BatchKind(enum.StrEnum):
    JSON_IMPORT = "contacts_json_import"
    REMOVE_MEMBERSHIPS = "remove_list_memberships"
    ADD_MEMBERSHIPS = "add_list_memberships"


class BatchState(enum.StrEnum):
    STARTED = "started"  # the platform accepted it; poll `activity_id`
    COMPLETED = "completed"
    FAILED = "failed"


class SyncBatch(Base):
    """One bulk activity for a set of contacts at known versions, and its write-ahead record.

    Committed BEFORE the import is sent (`activity_id` still null): if the run dies before
    the platform's answer is stored, the next run finds the row, notes its lists on its
    contacts (the platform may have added them) and sends them again. Once the answer comes
    the activity id is stored, so a re-run polls the activity it already started rather than
    importing the same contacts again.
    """

    __tablename__ = "sync_batches"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))  # BatchKind
    activity_id: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), server_default=BatchState.STARTED.value)
    list_ids: Mapped[list[str]] = mapped_column(
        ARRAY(String(64)), server_default=text("'{}'::varchar[]")
    )
    contacts: Mapped[dict[str, Any]] = mapped_column(
        JSONB, server_default=text("'{}'::jsonb")
    )  # {"<contact id>": <version pushed>}
    error: Mapped[str | None] = mapped_column(Text)
    activity_errors: Mapped[list[Any]] = mapped_column(JSONB, server_default=text("'[]'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "ix_sync_batches_account_started",
            "account_id",
            postgresql_where=text("state = 'started'"),
        ),
    )
