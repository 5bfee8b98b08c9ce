"""Jobs the operators can watch (historical imports first), and the import's checkpoints.

A job row is the source of truth for a long-running piece of work: arq only delivers it.
Whoever runs it holds a lease (`lease_token`, `lease_until`) renewed while it works and
checked inside every transaction that writes the job's effects, so a worker that was
presumed dead cannot commit anything once another one took over.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class JobKind(enum.StrEnum):
    IMPORT = "import"  # the historical import after connecting
    RESYNC = "resync"  # POST /stripe/resync: the same import again
    RECOMPUTE = "recompute"
    BULK_SYNC = "bulk_sync"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
IMPORT_KINDS = (JobKind.IMPORT, JobKind.RESYNC)


class NoticeState(enum.StrEnum):
    """The completion email of a job: sent at most once."""

    NONE = "none"  # not due (still running, or cancelled)
    PENDING = "pending"  # due: the job ended
    SENDING = "sending"  # claimed by a sender; never claimed twice
    SENT = "sent"
    FAILED = "failed"  # the mail server refused it for good


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # job_<hex>
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("stripe_connections.id", ondelete="CASCADE")
    )
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), server_default=JobState.QUEUED.value)
    progress: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    report: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())
    lease_token: Mapped[str | None] = mapped_column(String(32))
    lease_until: Mapped[datetime | None]
    notice_state: Mapped[str] = mapped_column(String(16), server_default=NoticeState.NONE.value)
    notice_attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    notice_sent_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_jobs_account_id_created_at", "account_id", "created_at", "id"),
        Index("ix_jobs_created_at", "created_at", "id"),
        # One active import per connection: a resync while one runs answers that one.
        Index(
            "uq_jobs_active_import",
            "connection_id",
            unique=True,
            postgresql_where=text(
                "state IN ('queued', 'running') AND kind IN ('import', 'resync')"
            ),
        ),
        Index(
            "ix_jobs_notice_pending",
            "id",
            postgresql_where=text("notice_state = 'pending'"),
        ),
    )


class ImportWindow(Base):
    """One `created` window of one Stripe list an import reads, and how far it got.

    Updated in the same transaction that applies a page, so `cursor` (the last applied
    object id, Stripe's `starting_after`) never runs ahead of or behind what is stored.
    """

    __tablename__ = "import_windows"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    resource: Mapped[str] = mapped_column(String(32))  # customers | charges | ...
    created_gte: Mapped[int] = mapped_column(BigInteger)  # unix seconds, inclusive
    created_lt: Mapped[int] = mapped_column(BigInteger)  # unix seconds, exclusive
    cursor: Mapped[str | None] = mapped_column(String(255))
    oldest_created: Mapped[int | None] = mapped_column(BigInteger)  # of the last applied page
    objects: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    pages: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    done: Mapped[bool] = mapped_column(server_default=text("false"))
    counts: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))

    __table_args__ = (Index("ix_import_windows_job_id", "job_id"),)


class ImportTouched(Base):
    """A contact an import's pages touched (linked a row to, created, or moved the consent
    of) whose finish is still owed: written with the page, finished in bulk once the lists
    are read (`imports.runner`). `changed`: created or consent moved, so the contact hooks
    hear of it even when its activity turns out the same."""

    __tablename__ = "import_touched"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    contact_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    changed: Mapped[bool] = mapped_column(server_default=text("false"))
