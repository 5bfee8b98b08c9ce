"""Cutting work into calls the platform accepts whole (external-apis.md).

`contacts_json_import` silently drops contacts past 40,000 or 4 MB, and membership calls
take at most 500 contact ids: batches are cut here, from the exact bytes the client sends.
Rows are sized in groups, one encoding per group, and one by one only where a group would
cross a batch's limit.
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


class ImportBatcher(Generic[K]):
    """Builds import batches incrementally: `add` one row at a time, or `add_many` rows
    for one list set, and get back the batches that just filled; `flush` the rest at the end.

    A batch holds rows for one identical list set, at most `max_contacts` of them, and its
    request body stays under `max_bytes`.
    """

    def __init__(
        self, *, max_contacts: int = MAX_IMPORT_CONTACTS, max_bytes: int = MAX_IMPORT_BYTES
    ) -> None:
        self.max_contacts = max_contacts
        self.max_bytes = max_bytes
        self._open: dict[tuple[str, ...], ImportBatch[K]] = {}
        self._empty: dict[tuple[str, ...], int] = {}

    def add(self, key: K, list_ids: Sequence[str], row: Mapping[str, str]) -> list[ImportBatch[K]]:
        lists = tuple(sorted(set(list_ids)))
        empty = self._empty_size(lists)
        row_size = len(_encode_row(row))
        if empty + row_size >= self.max_bytes:
            raise ValueError("one contact's row alone is too large to import")
        batch = self._open.get(lists)
        full: list[ImportBatch[K]] = []
        if batch is not None and (
            len(batch.rows) >= self.max_contacts or batch.size + 1 + row_size >= self.max_bytes
        ):
            full.append(batch)
            batch = None
        if batch is None:
            batch = self._open[lists] = ImportBatch[K](lists, size=empty)
        else:
            row_size += 1  # the comma between rows
        batch.keys.append(key)
        batch.rows.append(row)
        batch.size += row_size
        return full

    def add_many(
        self, keys: Sequence[K], list_ids: Sequence[str], rows: Sequence[Mapping[str, str]]
    ) -> list[ImportBatch[K]]:
        """`add` each (key, row) for the same lists, sized with one encoding when they all
        fit in the open batch (or in a new one)."""
        lists = tuple(sorted(set(list_ids)))
        if not rows:
            return []
        # `[r1,r2,...]`: the rows with the commas between them, plus the brackets.
        size = len(_ENCODER.encode(list(rows)).encode()) - 2
        batch = self._open.get(lists)
        if batch is not None and batch.rows:
            fits = len(batch.rows) + len(rows) <= self.max_contacts and (
                batch.size + 1 + size < self.max_bytes
            )
            if fits:
                batch.keys.extend(keys)
                batch.rows.extend(rows)
                batch.size += 1 + size
                return []
        else:
            empty = self._empty_size(lists)
            if len(rows) <= self.max_contacts and empty + size < self.max_bytes:
                self._open[lists] = ImportBatch[K](lists, list(keys), list(rows), empty + size)
                return []
        # Some batch fills on the way: find where, row by row.
        full: list[ImportBatch[K]] = []
        for key, row in zip(keys, rows, strict=True):
            full.extend(self.add(key, lists, row))
        return full

    def flush(self) -> list[ImportBatch[K]]:
        """The batches still open (each non-empty), in the order their list sets appeared."""
        batches = [b for b in self._open.values() if b.rows]
        self._open.clear()
        return batches

    def _empty_size(self, lists: tuple[str, ...]) -> int:
        empty = self._empty.get(lists)
        if empty is None:
            empty = self._empty[lists] = len(encode_import_body([], lists))
        return empty


# Encodes as `encode_import_body` does; made once (json.dumps with options builds an
# encoder per call).
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def _encode_row(row: Mapping[str, str]) -> bytes:
    return _ENCODER.encode(row).encode()


def import_batches(
    items: Iterable[tuple[K, Sequence[str], Mapping[str, str]]],
    *,
    max_contacts: int = MAX_IMPORT_CONTACTS,
    max_bytes: int = MAX_IMPORT_BYTES,
) -> list[ImportBatch[K]]:
    """Group (key, list ids, row) by identical list sets, then cut each group into batches
    of at most `max_contacts` rows whose request body stays under `max_bytes`."""
    batcher = ImportBatcher[K](max_contacts=max_contacts, max_bytes=max_bytes)
    batches: list[ImportBatch[K]] = []
    for key, list_ids, row in items:
        batches.extend(batcher.add(key, list_ids, row))
    return batches + batcher.flush()


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
