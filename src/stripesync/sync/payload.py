"""What the platform is told about a contact: its custom field values, its name as first
and last, and its `contacts_json_import` row (external-apis.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from stripesync.models import PlatformCustomField
from stripesync.models.sync import CustomFieldKey


class PushFields(Protocol):
    """What `field_values` reads: a `Contact`, or the sync engine's lighter row."""

    @property
    def purchase_count(self) -> int: ...
    @property
    def total_spent(self) -> dict[str, Any]: ...
    @property
    def last_purchase_at(self) -> datetime | None: ...


def field_values(contact: PushFields) -> dict[CustomFieldKey, str]:
    """The contact's custom field values as the platform takes them."""
    return _field_values(contact.purchase_count, contact.total_spent, contact.last_purchase_at)


def _field_values(
    purchase_count: int, total_spent: dict[str, Any], last_purchase_at: datetime | None
) -> dict[CustomFieldKey, str]:
    values = {CustomFieldKey.PURCHASE_COUNT: str(purchase_count)}
    if len(total_spent) == 1:
        # One amount in one currency; spend in several has no single figure to show.
        (minor,) = total_spent.values()
        values[CustomFieldKey.LIFETIME_SPEND] = f"{int(minor) / 100:.2f}"
    if last_purchase_at is not None:
        values[CustomFieldKey.LAST_PURCHASE_DATE] = last_purchase_at.date().isoformat()
    return values


def split_name(name: str | None) -> tuple[str | None, str | None]:
    """(first name, last name), each at most 50 characters as the platform takes them."""
    if not name:
        return None, None
    first, _, last = name.strip().partition(" ")
    return first[:50] or None, last.strip()[:50] or None


class ImportRows:
    """Builds `contacts_json_import` rows, with the custom fields' columns worked out once
    (100,000 rows a run: the less Python per row, the better)."""

    def __init__(self, fields: dict[str, PlatformCustomField]) -> None:
        self.columns = {
            key: f"cf:{fields[key.value].name}" for key in CustomFieldKey if key.value in fields
        }

    def row(
        self,
        email: str,
        name: str | None,
        country: str | None,
        purchase_count: int,
        total_spent: dict[str, Any],
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
        for key, value in _field_values(purchase_count, total_spent, last_purchase_at).items():
            column = self.columns.get(key)
            if column is not None:
                row[column] = value
        return row
