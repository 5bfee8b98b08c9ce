"""HTTP contract of the segment endpoints (api.md "Segments")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from stripesync.segments.builtins import Thresholds

RULE_DESCRIPTION = (
    "A rule of segments.md: a condition {field, op, value} (total_spent also takes "
    "currency) or a group {all: [...]}, {any: [...]}, {not: rule}; at most 5 groups deep "
    "and 50 conditions. Invalid parts are answered with 422 naming their path, e.g. "
    "rule.all[2].any[0].value."
)

SegmentName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]


class SegmentOut(BaseModel):
    id: str
    key: str | None
    name: str
    kind: Literal["builtin", "custom"]
    rule: dict[str, Any] | None = Field(
        description="The rule; null for `all` (every contact with permission)."
    )
    member_count: int
    platform_list_id: str | None
    updated_at: datetime


class SegmentList(BaseModel):
    segments: list[SegmentOut]


class SegmentSummary(BaseModel):
    """A segment as the account endpoint shows it."""

    id: str
    key: str | None
    name: str
    member_count: int


class SegmentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: SegmentName
    rule: dict[str, Any] = Field(description=RULE_DESCRIPTION)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rule: dict[str, Any] = Field(description=RULE_DESCRIPTION)


class Member(BaseModel):
    email: str
    name: str | None
    stripe_customer_ids: list[str]
    purchase_count: int
    last_purchase_at: datetime | None


class MemberPage(BaseModel):
    members: list[Member]
    next_cursor: str | None


class PreviewOut(BaseModel):
    member_count: int
    sample: list[Member]


SegmentSettingsBody = Thresholds
