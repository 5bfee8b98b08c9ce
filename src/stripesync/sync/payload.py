"""What the platform is told about a contact: its custom field values, its name as first
and last, and its `contacts_json_import` row (external-apis.md)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from stripesync.models import PlatformCustomField
from stripesync.models.sync import CustomFieldKey


class PushFields(Protocol):
    """What `field_values` reads: a `Contact`, or the sync engine's lighter row."""

    @property
    def purchase_count(self) -> int: ...
    @property
    def total_spent(self) -> Mapping[str, Any]: ...
    @property
    def last_purchase_at(self) -> datetime | None: ...


def field_values(contact: PushFields) -> dict[CustomFieldKey, str]:
    """The contact's custom field values as the platform takes them."""
    values = {CustomFieldKey.PURCHASE_COUNT: str(contact.purchase_count)}
    if (spend := _spend(contact.total_spent)) is not None:
        values[CustomFieldKey.LIFETIME_SPEND] = spend
    if contact.last_purchase_at is not None:
        values[CustomFieldKey.LAST_PURCHASE_DATE] = contact.last_purchase_at.date().isoformat()
    return values


# Stripe's currencies whose minor unit is not a hundredth (stripe.com/docs/currencies):
# amounts in these are whole units, or thousandths.
ZERO_DECIMAL = frozenset(
    [
        "bif",
        "clp",
        "djf",
        "gnf",
        "jpy",
        "kmf",
        "krw",
        "mga",
        "pyg",
        "rwf",
        "ugx",
        "vnd",
        "vuv",
        "xaf",
        "xof",
        "xpf",
    ]
)
THREE_DECIMAL = frozenset(["bhd", "jod", "kwd", "omr", "tnd"])


def money_text(minor: int, currency: str) -> str:
    """An amount in minor units as the decimal figure a person reads (12345 usd: 123.45)."""
    if currency.lower() in ZERO_DECIMAL:
        return str(minor)
    if currency.lower() in THREE_DECIMAL:
        return f"{minor / 1000:.3f}"
    return f"{minor / 100:.2f}"


def _spend(total_spent: Mapping[str, Any]) -> str | None:
    """Lifetime spend in its one currency; spend in several has no single figure to show."""
    if len(total_spent) != 1:
        return None
    ((currency, minor),) = total_spent.items()
    return money_text(int(minor), currency)


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """(first name, last name), each at most 50 characters as the platform takes them."""
    if not name:
        return None, None
    first, _, last = name.strip().partition(" ")
    return first[:50] or None, last.strip()[:50] or None


class ImportRows:
    """Builds `contacts_json_import` rows with the values of `field_values`, the custom
    fields' columns worked out once (100,000 rows a run: the less Python per row, and the
    fewer objects, the better)."""

    def __init__(self, fields: dict[str, PlatformCustomField]) -> None:
        def column(key: CustomFieldKey) -> str | None:
            found = fields.get(key.value)
            return f"cf:{found.name}" if found is not None else None

        self.purchase_count = column(CustomFieldKey.PURCHASE_COUNT)
        self.lifetime_spend = column(CustomFieldKey.LIFETIME_SPEND)
        self.last_purchase_date = column(CustomFieldKey.LAST_PURCHASE_DATE)

    def row(
        self,
        email: str,
        name: str | None,
        country: str | None,
        purchase_count: int,
        total_spent: Mapping[str, Any],
        last_purchase_at: datetime | None,
    ) -> dict[str, str]:
        row = {"email": email}
        if name:
            first, last = split_name(name)
            if first:
                row["first_name"] = first
            if last:
                row["last_name"] = last
        if country:
            row["country"] = country
        if self.purchase_count:
            row[self.purchase_count] = str(purchase_count)
        if total_spent and self.lifetime_spend and (spend := _spend(total_spent)) is not None:
            row[self.lifetime_spend] = spend
        if last_purchase_at is not None and self.last_purchase_date:
            row[self.last_purchase_date] = last_purchase_at.date().isoformat()
        return row
