"""HTTP contract of the contacts endpoints (api.md, "Contacts and customers")."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class Money(BaseModel):
    amount: int = Field(description="Minor units.")
    currency: str = Field(description="Lowercase ISO currency, as Stripe sends it.")


class ConsentRecord(BaseModel):
    state: str
    source: str
    evidence: dict[str, Any]
    created_at: datetime


class ConsentView(BaseModel):
    state: str = Field(description="none, pending, confirmed, implied, declined or unsubscribed")
    evidence: list[ConsentRecord] = Field(description="The consent ledger, oldest first.")


class PaymentSummary(BaseModel):
    purchase_count: int
    total_spent: list[Money]
    first_purchase_at: datetime | None
    last_purchase_at: datetime | None
    last_failed_at: datetime | None
    has_failed_since_last_purchase: bool
    refund_count: int
    last_refund_at: datetime | None
    customer_created_at: datetime | None
    subscription_status: str


class SyncState(BaseModel):
    state: str = Field(
        description="`ok` (the platform has `synced_version`), `pending` (a newer version waits),"
        " `error` (the platform refused it: `error` says why) or `deferred` (out of daily"
        " quota until `deferred_until`)."
    )
    version: int = Field(description="The contact's change-feed version.")
    synced_version: int = Field(0, description="The last version handled by the sync engine.")
    on_platform: bool = Field(
        False,
        description="Whether the contact was ever pushed (a contact without permission never is).",
    )
    lists: list[str] = Field(default_factory=list, description="Platform list ids pushed.")
    platform_contact_id: str | None = None
    synced_at: datetime | None = None
    error: str | None = Field(None, description="The platform's own message, when refused.")
    deferred_until: datetime | None = None


class ContactView(BaseModel):
    email: str
    name: str | None
    email_domain: str
    country: str | None
    consent: ConsentView
    stripe_customer_ids: list[str]
    activity: PaymentSummary
    segments: list[str] = Field(default_factory=list)
    sync: SyncState
    created_at: datetime
    updated_at: datetime


class UnsubscribeRequest(BaseModel):
    email: str = Field(max_length=320)
