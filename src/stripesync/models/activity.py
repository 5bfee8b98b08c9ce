"""Payment activity: the Stripe objects a contact's activity is derived from, the links
between contacts and their sources, the consent ledger and erasure suppressions.

Stripe rows are keyed by (account, livemode, Stripe id): a test-mode object never
overwrites or joins a live one, and a contact's activity is computed from the rows of the
connection's mode only.

A contact's sources are the rows that point at it through `contact_id`: non-deleted
customers, payments (a guest payment, or one whose customer has no usable email) and
checkout sessions. Links are derived from the Stripe rows (see activity/linking.py) and
rewritten whenever those rows change, so they never depend on the order events arrived in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, UniqueConstraint, func, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from stripesync.models.base import Base


class StripeCustomer(Base):
    """The latest known snapshot of a Stripe customer (precedence: activity/precedence.py)."""

    __tablename__ = "stripe_customers"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    livemode: Mapped[bool]
    stripe_id: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))  # normalised and valid, else null
    # Why there is no usable email: no_email | invalid_email | suppressed (import report).
    email_problem: Mapped[str | None] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str | None] = mapped_column(String(2))
    created: Mapped[datetime | None]
    deleted: Mapped[bool] = mapped_column(server_default=text("false"))  # tombstone: final
    observed_at: Mapped[datetime]  # when Stripe produced this snapshot (event created)
    digest: Mapped[str] = mapped_column(String(64))  # tie-break between same-second snapshots
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "livemode", "stripe_id", name="uq_stripe_customers_key"),
        Index("ix_stripe_customers_contact_id", "contact_id"),
    )


class Payment(Base):
    """One Stripe charge, the canonical payment, merged from every object that mentions it
    (charge, payment intent, invoice). Merge rules: activity/repository.py `upsert_payment`."""

    __tablename__ = "payments"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    livemode: Mapped[bool]
    charge_id: Mapped[str] = mapped_column(String(255))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    invoice_id: Mapped[str | None] = mapped_column(String(255))
    customer_id: Mapped[str | None] = mapped_column(String(255))  # Stripe customer id
    guest_email: Mapped[str | None] = mapped_column(String(320))  # normalised, valid
    guest_email_at: Mapped[datetime | None]
    billing_name: Mapped[str | None] = mapped_column(Text)
    billing_country: Mapped[str | None] = mapped_column(String(2))
    amount: Mapped[int] = mapped_column(BigInteger)
    amount_refunded: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    currency: Mapped[str] = mapped_column(String(3))
    status: Mapped[str] = mapped_column(String(16))  # pending | failed | succeeded
    created: Mapped[datetime]
    charge_seen: Mapped[bool] = mapped_column(server_default=text("false"))
    refunded_at: Mapped[datetime | None]
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="SET NULL")
    )
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "livemode", "charge_id", name="uq_payments_key"),
        Index("ix_payments_contact_id", "contact_id"),
        Index("ix_payments_account_customer", "account_id", "livemode", "customer_id"),
    )


class Subscription(Base):
    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    livemode: Mapped[bool]
    stripe_id: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(32))
    created: Mapped[datetime | None]
    observed_at: Mapped[datetime]
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now(), onupdate=func.now())

    __table_args__ = (
        UniqueConstraint("account_id", "livemode", "stripe_id", name="uq_subscriptions_key"),
        Index("ix_subscriptions_account_customer", "account_id", "livemode", "customer_id"),
    )


class CheckoutSession(Base):
    """A completed checkout: the buyer's email (a source of its own for guest buyers) and
    the buyer's answer to the promotions consent box."""

    __tablename__ = "checkout_sessions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    livemode: Mapped[bool]
    stripe_id: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str | None] = mapped_column(String(255))
    payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    promotions: Mapped[str | None] = mapped_column(String(16))  # opt_in | opt_out | null
    created: Mapped[datetime | None]
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="SET NULL")
    )

    __table_args__ = (
        UniqueConstraint("account_id", "livemode", "stripe_id", name="uq_checkout_sessions_key"),
        Index("ix_checkout_sessions_contact_id", "contact_id"),
    )


class ConsentEvent(Base):
    """The append-only consent ledger: what state, when, from which source, with what evidence.

    Rows are found by contact id or by the email hash (the contact may not exist yet, or may
    have been re-created), so a person's own word (unsubscribed, declined) outlives any row.
    """

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    contact_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("contacts.id", ondelete="SET NULL")
    )
    email_hash: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(32))
    evidence: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_consent_events_account_hash", "account_id", "email_hash", "id"),
        Index("ix_consent_events_contact_id", "contact_id"),
    )


class Suppression(Base):
    """What remains of an erased person: the hash of their email. Nothing recreates them."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"))
    email_hash: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32), server_default="erased")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (UniqueConstraint("account_id", "email_hash", name="uq_suppressions_key"),)
