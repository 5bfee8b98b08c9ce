"""Cutting work into calls the platform accepts whole (external-apis.md).

`contacts_json_import` silently drops contacts past 40,000 or 4 MB, and membership calls
take at most 500 contact ids: batches are cut here, from the exact bytes the client sends.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from stripesync.clients.constant_contact import (
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    MAX_MEMBERSHIP_CONTACTS,
    encode_import_body,
)

K = TypeVar("K", bound=Hashable)


@dataclass
class ImportBatch(Generic[K]):
    """One `contacts_json_import` call: rows for the same lists, with who they belong to."""

    list_ids: tuple[str, ...]
    keys: list[K] = field(default_factory=list)
    rows: list[Mapping[str, str]] = field(default_factory=list)
    size: int = 0  # encoded bytes of the whole request body


def import_batches(
    items: Iterable[tuple[K, Sequence[str], Mapping[str, str]]],
    *,
    max_contacts: int = MAX_IMPORT_CONTACTS,
    max_bytes: int = MAX_IMPORT_BYTES,
) -> list[ImportBatch[K]]:
    """Group (key, list ids, row) by identical list sets, then cut each group into batches
    of at most `max_contacts` rows whose request body stays under `max_bytes`."""
    groups: dict[tuple[str, ...], list[tuple[K, Mapping[str, str]]]] = defaultdict(list)
    for key, list_ids, row in items:
        groups[tuple(sorted(set(list_ids)))].append((key, row))
    batches: list[ImportBatch[K]] = []
    for list_ids, members in groups.items():
        empty = len(encode_import_body([], list_ids))
        batch = ImportBatch[K](list_ids, size=empty)
        for key, row in members:
            row_size = len(json.dumps(row, separators=(",", ":"), ensure_ascii=False).encode())
            row_size += 1 if batch.rows else 0  # the comma between rows
            if batch.rows and (
                len(batch.rows) >= max_contacts or batch.size + row_size >= max_bytes
            ):
                batches.append(batch)
                batch = ImportBatch[K](list_ids, size=empty)
                row_size -= 1
            if empty + row_size >= max_bytes:
                raise ValueError("one contact's row alone is too large to import")
            batch.keys.append(key)
            batch.rows.append(row)
            batch.size += row_size
        if batch.rows:
            batches.append(batch)
    return batches


def membership_batches(
    items: Iterable[tuple[str, Sequence[str]]], *, max_ids: int = MAX_MEMBERSHIP_CONTACTS
) -> list[tuple[tuple[str, ...], list[str]]]:
    """(list ids, contact ids ≤ 500) per call, for (contact id, list ids) pairs grouped by
    identical list sets."""
    groups: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for contact_id, list_ids in items:
        if list_ids:
            groups[tuple(sorted(set(list_ids)))].append(contact_id)
    return [
        (list_ids, ids[start : start + max_ids])
        for list_ids, ids in groups.items()
        for start in range(0, len(ids), max_ids)
    ]
