"""The built-in segments of segments.md, expressed in the same rule language as custom ones
so one compiler and one recompute serve both."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Thresholds(BaseModel):
    """An account's thresholds for the built-ins (`segment-settings`), with the defaults."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recent_days: int = Field(default=30, ge=1, le=3650)
    lapsed_days: int = Field(default=120, ge=1, le=3650)
    refund_days: int = Field(default=90, ge=1, le=3650)
    high_value_min: dict[str, int] = Field(
        default_factory=lambda: {"usd": 50000},
        min_length=1,
        max_length=20,
        description="Minimum total spent per currency, in minor units (zero-decimal "
        "currencies such as jpy count whole units).",
    )

    @field_validator("high_value_min")
    @classmethod
    def _currencies(cls, value: dict[str, int]) -> dict[str, int]:
        out: dict[str, int] = {}
        for currency, amount in value.items():
            if not (len(currency) == 3 and currency.isascii() and currency.isalpha()):
                raise ValueError(f"{currency!r} is not a three-letter currency code")
            if not 1 <= amount <= 10**15:
                raise ValueError(f"the {currency} minimum must be a positive amount")
            out[currency.lower()] = amount
        return dict(sorted(out.items()))


DEFAULT_THRESHOLDS = Thresholds()


def _cond(field: str, op: str, value: Any, **extra: Any) -> dict[str, Any]:
    return {"field": field, "op": op, **extra, "value": value}


@dataclass(frozen=True)
class BuiltinSegment:
    key: str
    name: str
    # The rule for given thresholds; None means every contact with permission.
    rule: Callable[[Thresholds], dict[str, Any] | None]


BUILTINS: tuple[BuiltinSegment, ...] = (
    BuiltinSegment("all", "Stripe - All Customers", lambda t: None),
    BuiltinSegment("prospects", "Stripe - Prospects", lambda t: _cond("purchase_count", "eq", 0)),
    BuiltinSegment(
        "first_time", "Stripe - First-time Customers", lambda t: _cond("purchase_count", "eq", 1)
    ),
    BuiltinSegment(
        "repeat", "Stripe - Repeat Customers", lambda t: _cond("purchase_count", "gte", 2)
    ),
    BuiltinSegment(
        "recent",
        "Stripe - Recent Customers",
        lambda t: _cond("last_purchase_at", "within_days", t.recent_days),
    ),
    BuiltinSegment(
        "lapsed",
        "Stripe - Lapsed Customers",
        lambda t: {
            "all": [
                _cond("purchase_count", "gte", 1),
                _cond("last_purchase_at", "not_within_days", t.lapsed_days),
            ]
        },
    ),
    BuiltinSegment(
        "high_value",
        "Stripe - High-Value Customers",
        lambda t: {
            "any": [
                _cond("total_spent", "gte", amount, currency=currency)
                for currency, amount in t.high_value_min.items()
            ]
        },
    ),
    BuiltinSegment(
        "failed_payment",
        "Stripe - Failed Payments",
        lambda t: _cond("has_failed_since_last_purchase", "eq", True),
    ),
    BuiltinSegment(
        "refunded",
        "Stripe - Refunded Customers",
        lambda t: _cond("last_refund_at", "within_days", t.refund_days),
    ),
)
BUILTIN_KEYS = tuple(b.key for b in BUILTINS)
