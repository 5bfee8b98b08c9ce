"""The HTTP contract of the opt-in email settings (api.md `/optin-email`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator


def _single_line(value: str) -> str:
    # A header value with a line break would let a merchant add headers of their own.
    if "\r" in value or "\n" in value:
        raise ValueError("must be a single line")
    return value.strip()


class OptinEmailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=200)
    from_name: str = Field(min_length=1, max_length=100)
    from_email: EmailStr = Field(max_length=320)
    reply_to: EmailStr = Field(max_length=320)
    intro: str | None = Field(
        default=None, max_length=2000, description="Plain text; blank lines separate paragraphs."
    )

    @field_validator("subject", "from_name")
    @classmethod
    def _no_line_breaks(cls, value: str) -> str:
        value = _single_line(value)
        if not value:
            raise ValueError("must not be blank")
        return value


class OptinEmailOut(BaseModel):
    subject: str
    from_name: str
    from_email: str
    reply_to: str
    intro: str | None
    activated_at: datetime | None


PreviewFormat = Literal["html", "text"]
