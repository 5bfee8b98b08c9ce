"""Constant Contact V3: limits, typed errors and the bodies the client sends and reads.

Split from `constant_contact.py` (the client) so each stays small; the client module
re-exports every name here, so callers import from either.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import QuotaExhausted, next_utc_midnight

# Platform limits (external-apis.md). Beyond them the platform drops data silently or says 400.
MAX_IMPORT_CONTACTS = 40_000
MAX_IMPORT_BYTES = 4_000_000  # "under 4 MB": stay clear of 4 MiB and 4 MB alike
MAX_MEMBERSHIP_CONTACTS = 500
MAX_LISTS_PER_CALL = 50
MAX_EMAIL_LENGTH = 50
MAX_NAME_LENGTH = 50
MAX_PHONE_LENGTH = 25

ActivityState = Literal[
    "initialized", "processing", "completed", "cancelled", "failed", "timed_out"
]
FINISHED_STATES: frozenset[str] = frozenset({"completed", "cancelled", "failed", "timed_out"})
CustomFieldType = Literal["string", "date", "currency", "number"]


# --- errors ---------------------------------------------------------------------------------


class PlatformError(Exception):
    """A call the platform refused or that never got an answer.

    `status` is None for network errors and timeouts. `retryable` says whether the same
    call may succeed later (throttling, 5xx, network); a permanent 4xx is not retryable and
    its `message` is the platform's own words, fit to show the merchant.
    """

    def __init__(
        self,
        status: int | None,
        error_key: str,
        message: str,
        *,
        retryable: bool,
        endpoint: str = "",
    ) -> None:
        Exception.__init__(self, f"{endpoint}: {status} {error_key}: {message}")
        self.status = status
        self.error_key = error_key
        self.message = message
        self.retryable = retryable
        self.endpoint = endpoint


class PlatformThrottled(PlatformError):
    """429 `throttled`: too many requests per second; slow down and try again."""


class PlatformQuotaExceeded(PlatformError, QuotaExhausted):
    """429 `quota_exceeded`: the API key's daily quota is used up until `retry_at`.

    Also a `QuotaExhausted`, so callers defer on our own limiter's verdict and the
    platform's with one `except`.
    """

    def __init__(
        self, status: int, error_key: str, message: str, *, endpoint: str, retry_at: datetime
    ) -> None:
        PlatformError.__init__(self, status, error_key, message, retryable=False, endpoint=endpoint)
        self.name = "constant_contact"
        self.retry_at = retry_at


def parse_error_body(body: bytes, status: int) -> tuple[str, str]:
    """(error_key, error_message) from an error body of either shape, or from plain text.

    Several errors in an array are joined into one message; the first error's key wins.
    """
    try:
        data: Any = json.loads(body) if body else None
    except ValueError:
        data = None
    items: list[Mapping[str, Any]]
    if isinstance(data, list):
        items = [item for item in data if isinstance(item, Mapping)]
    elif isinstance(data, Mapping):
        items = [data]
    else:
        items = []
    keys = [str(i.get("error_key") or i.get("error") or "") for i in items]
    messages = [
        str(i.get("error_message") or i.get("message") or i.get("error_description") or "")
        for i in items
    ]
    key = next((k for k in keys if k), f"http_{status}")
    message = "; ".join(m for m in messages if m)
    if not message:
        text = body.decode("utf-8", "replace").strip() if body else ""
        message = text[:300] or f"HTTP {status}"
    return key, message


def error_from_response(response: httpx.Response, endpoint: str) -> PlatformError:
    """The typed error for a non-2xx answer."""
    status = response.status_code
    key, message = parse_error_body(response.content, status)
    if status == 429 and key == "quota_exceeded":
        return PlatformQuotaExceeded(
            status, key, message, endpoint=endpoint, retry_at=next_utc_midnight(utcnow())
        )
    if status == 429:
        return PlatformThrottled(status, key, message, retryable=True, endpoint=endpoint)
    retryable = status >= 500 or status == 408
    return PlatformError(status, key, message, retryable=retryable, endpoint=endpoint)


# --- request and response bodies ------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreetAddress(_Model):
    kind: Literal["home", "work", "other"] = "home"
    street: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class CustomFieldValue(_Model):
    custom_field_id: str
    value: str


class SignUpForm(_Model):
    """Body of `POST /contacts/sign_up_form` (create or update by email, explicit permission)."""

    email_address: str
    list_memberships: list[str] = Field(min_length=1, max_length=MAX_LISTS_PER_CALL)
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    street_address: StreetAddress | None = None
    custom_fields: list[CustomFieldValue] = Field(default_factory=list)


class SignUpResult(_Model):
    contact_id: str
    action: str = ""


class Activity(_Model):
    """A bulk activity's status; `activity_errors` are the platform's messages."""

    activity_id: str
    state: str = "initialized"
    percent_done: int | None = None
    activity_errors: list[str] = Field(default_factory=list)
    status: dict[str, Any] = Field(default_factory=dict)

    @field_validator("activity_errors", mode="before")
    @classmethod
    def _messages(cls, value: Any) -> Any:
        # Seen both as plain strings and as {"message": ...} objects.
        if isinstance(value, list):
            return [
                str(v.get("message") or v.get("error_message") or v) if isinstance(v, dict) else v
                for v in value
            ]
        return value or []

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES


class PlatformContact(_Model):
    """A contact as `GET /contacts?include=list_memberships` shows it."""

    contact_id: str
    email: str | None = None
    permission_to_send: str | None = None
    list_memberships: list[str] = Field(default_factory=list)

    @classmethod
    def from_api(cls, data: Mapping[str, Any]) -> PlatformContact:
        email_address = data.get("email_address") or {}
        return cls(
            contact_id=str(data["contact_id"]),
            email=email_address.get("address"),
            permission_to_send=email_address.get("permission_to_send"),
            list_memberships=list(data.get("list_memberships") or []),
        )


class ContactList(_Model):
    list_id: str
    name: str


class CustomField(_Model):
    custom_field_id: str
    label: str
    name: str = ""
    type: str = "string"
