"""The HTTP contract of accounts and the Stripe connection (api.md). Secrets go in, never out."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, SecretStr

from stripesync.segments.schemas import SegmentSummary


class CcCredentialsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    access_token: SecretStr = Field(min_length=1, max_length=4096)
    refresh_token: SecretStr | None = Field(default=None, min_length=1, max_length=4096)
    expires_at: datetime | None = None


class AccountIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    owner_email: EmailStr = Field(max_length=320)
    postal_address: str | None = Field(default=None, max_length=2000)
    cc_credentials: CcCredentialsIn | None = Field(
        default=None, description="Omitted: the stored credentials are kept."
    )


class CcCredentialsOut(BaseModel):
    expires_at: datetime | None
    error: str | None = Field(
        default=None, description="Why the last refresh failed; cleared by new credentials."
    )


class AccountOut(BaseModel):
    account_id: str
    name: str
    owner_email: str
    postal_address: str | None
    cc_credentials: CcCredentialsOut | None
    created_at: datetime
    updated_at: datetime


class StripeBlock(BaseModel):
    status: Literal["not_connected", "pending", "connected", "revoked", "error"]
    stripe_account_id: str | None = None
    livemode: bool | None = None
    mode: Literal["optin", "direct"] | None = None
    connected_at: datetime | None = None
    last_event_at: datetime | None = None
    revoked_at: datetime | None = None
    error: str | None = Field(default=None, description="Reason code when status is error.")


class ImportBlock(BaseModel):
    job_id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: dict[str, Any] = Field(default_factory=dict)


class OptinCounts(BaseModel):
    sent: int = 0
    confirmed: int = 0
    declined: int = 0
    pending: int = 0


class DashboardOut(BaseModel):
    """`GET /v1/accounts/{account_id}`: the integration dashboard's data."""

    model_config = ConfigDict(populate_by_name=True)

    account_id: str
    name: str
    owner_email: str
    stripe: StripeBlock
    import_: ImportBlock | None = Field(alias="import", serialization_alias="import")
    optin: OptinCounts
    segments: list[SegmentSummary]


class ConnectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["optin", "direct"]
    return_url: str = Field(min_length=1, max_length=2048)
    prior_consent_affirmed: bool | None = Field(
        default=None, description="Required `true` for mode `direct`."
    )
    affirmed_by: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="The platform user affirming prior consent; required for `direct`.",
    )


class ConnectOut(BaseModel):
    authorize_url: str
    expires_at: datetime
