"""The sync engine: push each lagging contact's desired state to the platform, once.

Per account, one run (an arq job with the account's job id, so never two at once):
- contacts without permission (consent none, pending, declined, unsubscribed) are never
  pushed: their version is marked seen and nothing leaves;
- list removals first (`remove_list_memberships`, ≤ 500 platform ids a call), learning a
  missing platform id with a lookup by email;
- confirmed contacts not yet on the platform with explicit permission → `sign_up_form`
  (explicit permission, returns the id);
- everyone else permitted → `contacts_json_import` batches grouped by identical list sets
  (implicit permission for new contacts; existing ones keep theirs, and the platform never
  re-subscribes an unsubscribed contact through an import), polled to completion.
A contact is marked synced at the version that was read, so a change made meanwhile leaves
it lagging for the next run: ten quick changes cost one push, and none is lost.

The lagging contacts are read once, in chunks, in id order, as plain rows with their
segments; the import rows are built as they come, into one open batch per list set, and a
batch is sent as soon as it is full (see `bulk` for how imports are sent and settled), the
rest once the read ends. Read grouped by list set, the first batches could go earlier, but
the database must then work out every contact's list set before the first row: the read
ends later, and with it the last batch, which is the one the run waits for.
"""

from __future__ import annotations

import asyncio
import gc
import json
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import structlog

from stripesync.clients.constant_contact import (
    MAX_EMAIL_LENGTH,
    ConstantContactClient,
    PlatformError,
    SignUpForm,
)
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import QuotaExhausted
from stripesync.models import PERMITTED_CONSENT, ConsentState, PlatformCustomField
from stripesync.sync import repository
from stripesync.sync.batching import ImportBatch, ImportBatcher, membership_batches
from stripesync.sync.bulk import ImportStream, resume_imports
from stripesync.sync.lists import (
    ensure_custom_fields,
    ensure_platform_lists,
    remove_deleted_segment_lists,
)
from stripesync.sync.metrics import SYNC_CONTACTS
from stripesync.sync.payload import ImportRows, field_values, split_name

log = structlog.get_logger(__name__)

# Lagging contacts are read this many at a time (one cursor), as plain rows of only the
# columns a push needs: loading 100,000 ORM objects cost more than the platform's work.
READ_CHUNK = 10_000
_PERMITTED = frozenset(str(c) for c in PERMITTED_CONSENT)
_NO_SPEND: Mapping[str, Any] = MappingProxyType({})
_CONFIRMED = str(ConsentState.CONFIRMED)


# Reading 100,000 lagging contacts builds as many long-lived objects (their rows): with
# the collector's default thresholds its young generations run every 700 allocations and
# its full collections re-scan them all again and again (a third of the read's CPU). While
# a read runs, the collector runs this rarely (allocations; then young and full
# collections per collection of the younger generation); as before once no read runs
# (counted: the worker runs several syncs at once).
_GC_THRESHOLDS_WHILE_READING = (100_000, 50, 100)
_gc_readers = 0
_gc_thresholds = gc.get_threshold()


@contextmanager
def _fewer_collections() -> Iterator[None]:
    global _gc_readers, _gc_thresholds
    if _gc_readers == 0:
        _gc_thresholds = gc.get_threshold()
        gc.set_threshold(*_GC_THRESHOLDS_WHILE_READING)
    _gc_readers += 1
    try:
        yield
    finally:
        _gc_readers -= 1
        if _gc_readers == 0:
            gc.set_threshold(*_gc_thresholds)


@dataclass
class SyncReport:
    skipped: int = 0  # no permission: nothing pushed
    signed_up: int = 0
    imported: int = 0
    removed: int = 0
    errors: int = 0
    deferred: int = 0
    deferred_until: datetime | None = None
    calls: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Contact:
    """The columns of a contact that a push needs (read with Core, not as an ORM entity)."""

    id: int
    consent_state: str
    email: str
    name: str | None
    country: str | None
    purchase_count: int
    total_spent: Mapping[str, Any]
    last_purchase_at: datetime | None
    synced_lists: list[str]
    platform_contact_id: str | None


@dataclass(slots=True)
class _Work:
    contact: _Contact
    version: int
    desired: list[str]


# Import rows by their lists: (contact ids, rows).
_Built = dict[tuple[str, ...], tuple[list[int], list[Mapping[str, str]]]]
# A contact to import found before the custom fields existed: (its lists, its row as read,
# its total spent).
_Waiting = tuple[tuple[str, ...], Any, Mapping[str, Any]]


@dataclass
class _Found:
    """What one read of the lagging contacts found to do, by kind of push."""

    revoked: list[_Work] = field(default_factory=list)  # permission withdrawn after a push
    removals: list[_Work] = field(default_factory=list)  # permitted, leaving some lists
    sign_ups: list[_Work] = field(default_factory=list)
    listless: dict[int, int] = field(default_factory=dict)  # id → version: no list (yet)
    versions: dict[int, int] = field(default_factory=dict)  # to import: id → version
    batcher: ImportBatcher[int] = field(default_factory=ImportBatcher[int])
    pending: set[int] = field(default_factory=set)  # permitted, not pushed yet
    removing: set[int] = field(default_factory=set)  # ids of `removals`
    # Batches with someone leaving some lists: sent after the removals, so that no one is
    # marked synced onto their new lists while still on an old one.
    held: list[ImportBatch[int]] = field(default_factory=list)

    def add_rows(self, built: _Built) -> list[ImportBatch[int]]:
        """Add built rows to the open batches; answer those that filled."""
        full: list[ImportBatch[int]] = []
        for list_ids, (keys, rows) in built.items():
            full.extend(self.batcher.add_many(keys, list_ids, rows))
        return full

    def send(self, batches: Sequence[ImportBatch[int]], stream: ImportStream) -> None:
        """Hand complete batches to the stream now, or hold them until the removals."""
        for batch in batches:
            if self.removing and not self.removing.isdisjoint(batch.keys):
                self.held.append(batch)
            else:
                stream.submit(batch)


async def sync_account(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    account_id: str,
    *,
    limit: int = 200_000,
    poll_interval: float = 0.25,
) -> SyncReport:
    """Push every lagging contact of the account; answer what happened.

    Raises a retryable `PlatformError` when the platform stays unavailable (the job retries
    with backoff); out of daily quota, the remaining contacts are marked `deferred` until the
    next UTC day and the report says until when.
    """
    report = SyncReport()
    found = _Found()
    stream = ImportStream(
        session_factory,
        client,
        account_id,
        found.versions,
        found.pending,
        report,
        poll_interval,
    )
    try:
        await resume_imports(session_factory, client, account_id, report, poll_interval)
        await remove_deleted_segment_lists(session_factory, client, account_id)
        await ensure_platform_lists(session_factory, client, account_id)
        # On a first run the custom fields are created at the platform's pace while the
        # lagging contacts are read (import rows are built once the fields exist).
        fields_made = asyncio.create_task(ensure_custom_fields(session_factory, client, account_id))
        try:
            with _fewer_collections():
                await _read_lagging(
                    session_factory, account_id, limit, report, fields_made, found, stream
                )
            fields = await fields_made
            stream.all_read()
        finally:
            fields_made.cancel()  # when the read failed first
            await asyncio.gather(fields_made, return_exceptions=True)
        pending = found.pending
        pending_revoked = {w.contact.id for w in found.revoked}
        try:
            await _remove_lists(
                session_factory, client, [*found.revoked, *found.removals], report, poll_interval
            )
            async with transaction(session_factory) as session:
                await repository.mark_synced_many(
                    session, {w.contact.id: w.version for w in found.revoked}, [], utcnow()
                )
            report.skipped += len(found.revoked)
            pending_revoked.clear()
            await _sign_up(session_factory, client, found.sign_ups, fields, report, pending)
            async with transaction(session_factory) as session:
                await repository.mark_synced_many(session, found.listless, [], utcnow())
            pending.difference_update(found.listless)
            for batch in found.held:
                stream.submit(batch)
            await stream.finish()
        except QuotaExhausted as exc:
            # Those in flight end first: whoever they did not take waits for tomorrow.
            await asyncio.gather(stream.finish(), return_exceptions=True)
            async with transaction(session_factory) as session:
                await repository.mark_deferred(session, pending | pending_revoked, exc.retry_at)
            report.deferred_until = exc.retry_at
            report.deferred = len(pending | pending_revoked)
    except QuotaExhausted as exc:
        # Out of quota before any contact was read: everyone lagging waits for tomorrow.
        async with transaction(session_factory) as session:
            report.deferred = await repository.defer_lagging(session, account_id, exc.retry_at)
        report.deferred_until = exc.retry_at
    finally:
        await stream.cancel()  # nothing left on success; on a failure, resumed next run
    SYNC_CONTACTS.labels("synced").inc(report.signed_up + report.imported)
    SYNC_CONTACTS.labels("skipped").inc(report.skipped)
    SYNC_CONTACTS.labels("error").inc(report.errors)
    SYNC_CONTACTS.labels("deferred").inc(report.deferred)
    log.info(
        "sync_account_done",
        account_id=account_id,
        skipped=report.skipped,
        signed_up=report.signed_up,
        imported=report.imported,
        removed=report.removed,
        errors=report.errors,
        deferred_until=report.deferred_until.isoformat() if report.deferred_until else None,
    )
    return report


async def _read_lagging(
    session_factory: SessionFactory,
    account_id: str,
    limit: int,
    report: SyncReport,
    fields_made: asyncio.Task[dict[str, PlatformCustomField]],
    found: _Found,
    stream: ImportStream,
) -> None:
    """Read the lagging contacts chunk by chunk into `found`, sorting out what each needs.
    The rows of those to import are built here, into batches (of them only ids and
    versions are kept), and each batch goes to `stream` once full; the others once all
    are read (a row of any list set may come last).

    Contacts without permission are marked seen chunk by chunk and never leave."""
    now = utcnow()
    rows_of: ImportRows | None = None  # once the custom fields exist
    waiting: list[_Waiting] = []
    lists_of: dict[str | None, tuple[str, ...]] = {}  # segments as read → lists, sorted
    async with transaction(session_factory) as reading:
        # A segment deleted after this is read may still put its list on a contact now;
        # the next run deletes its platform list whole (see `remove_deleted_segment_lists`).
        list_of = await repository.segment_lists(reading, account_id)
        chunks = repository.lagging_rows(reading, account_id, now, limit, READ_CHUNK, list_of)
        # The database reads the next chunk while this one is sorted out here (which lets
        # it run every few hundred rows).
        fetching: asyncio.Task[Sequence[Any] | None] | None = asyncio.create_task(
            _next_chunk(chunks)
        )
        try:
            while fetching is not None:
                chunk = await fetching
                fetching = None
                if not chunk:
                    break
                fetching = asyncio.create_task(_next_chunk(chunks))
                if rows_of is None and fields_made.done():
                    rows_of = ImportRows(fields_made.result())
                    await _build(rows_of, waiting, found, stream)
                built: _Built = {}
                unpermitted: dict[int, int] = {}
                for n, row in enumerate(chunk):
                    if n % 500 == 0:
                        await asyncio.sleep(0)
                    (
                        cid,
                        version,
                        consent,
                        email,
                        name,
                        country,
                        purchases,
                        spent_json,
                        last_purchase,
                        synced_lists,
                        platform_id,
                        segments,
                    ) = row
                    permitted = consent in _PERMITTED
                    if not permitted and not synced_lists:
                        # Permission is sacred: nothing about this person leaves.
                        unpermitted[cid] = version
                        continue
                    spent = _NO_SPEND if spent_json == "{}" else json.loads(spent_json)
                    if not permitted:
                        # Permission withdrawn after a push: take them off our lists (a
                        # removal sends nothing about the person and subscribes no one).
                        found.revoked.append(_Work(_contact(row, spent), version, []))
                        continue
                    desired = lists_of.get(segments)
                    if desired is None:
                        desired = lists_of[segments] = _lists(segments, list_of)
                    if synced_lists and not set(synced_lists).issubset(desired):
                        found.removals.append(_Work(_contact(row, spent), version, list(desired)))
                        found.removing.add(cid)
                    if consent == _CONFIRMED and not platform_id and not synced_lists:
                        # Only the first push of someone the platform never had uses
                        # sign_up_form: on a contact that exists it would re-subscribe
                        # someone who unsubscribed on the platform since. Every later
                        # update goes through the import, which never does.
                        found.pending.add(cid)
                        found.sign_ups.append(_Work(_contact(row, spent), version, list(desired)))
                        continue
                    found.pending.add(cid)
                    if not desired:
                        found.listless[cid] = version
                        continue
                    found.versions[cid] = version
                    if rows_of is None:
                        waiting.append((desired, row, spent))
                        continue
                    group = built.get(desired)
                    if group is None:
                        group = built[desired] = ([], [])
                    group[0].append(cid)
                    group[1].append(
                        rows_of.row(email, name, country, purchases, spent, last_purchase)
                    )
                found.send(found.add_rows(built), stream)
                if unpermitted:
                    async with transaction(session_factory) as session:
                        await repository.mark_synced_many(session, unpermitted, [], utcnow())
                    report.skipped += len(unpermitted)
        finally:
            if fetching is not None:
                fetching.cancel()
                await asyncio.gather(fetching, return_exceptions=True)
            await chunks.aclose()
    if waiting:
        await _build(ImportRows(await fields_made), waiting, found, stream)
    found.send(found.batcher.flush(), stream)


async def _next_chunk(chunks: AsyncIterator[Sequence[Any]]) -> Sequence[Any] | None:
    return await anext(chunks, None)


async def _build(
    rows_of: ImportRows, waiting: list[_Waiting], found: _Found, stream: ImportStream
) -> None:
    """Build the rows of contacts found before the custom fields existed, a list set at a
    time, and send the batches that fill."""
    groups: dict[tuple[str, ...], list[tuple[Any, Mapping[str, Any]]]] = {}
    for desired, row, spent in waiting:
        groups.setdefault(desired, []).append((row, spent))
    waiting.clear()
    for desired, items in groups.items():
        keys: list[int] = []
        rows: list[Mapping[str, str]] = []
        for n, (row, spent) in enumerate(items):
            if n % 500 == 0:
                await asyncio.sleep(0)  # lets the batches already handed over be sent
            keys.append(row.id)
            rows.append(
                rows_of.row(
                    row.email,
                    row.name,
                    row.country,
                    row.purchase_count,
                    spent,
                    row.last_purchase_at,
                )
            )
        found.send(found.add_rows({desired: (keys, rows)}), stream)


def _lists(segments: str | None, list_of: Mapping[int, str]) -> tuple[str, ...]:
    """The platform lists, sorted, of the segments as `repository.lagging_rows` reads them."""
    return tuple(sorted({list_of[int(s)] for s in segments.split(",")})) if segments else ()


def _contact(row: Any, total_spent: Mapping[str, Any]) -> _Contact:
    """A row of `repository.lagging_chunk` as the engine keeps it."""
    cid, _, consent, email, name, country, purchases, _, last_purchase, synced, platform_id = row[
        :11
    ]
    return _Contact(
        cid,
        consent,
        email,
        name,
        country,
        purchases,
        total_spent,
        last_purchase,
        synced or [],
        platform_id,
    )


async def _remove_lists(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    work: Sequence[_Work],
    report: SyncReport,
    poll_interval: float,
) -> None:
    removals: list[tuple[str, list[str]]] = []
    for item in work:
        gone = sorted(set(item.contact.synced_lists) - set(item.desired))
        if not gone:
            continue
        platform_id = item.contact.platform_contact_id
        if platform_id is None:
            found = await client.find_contact(item.contact.email)
            if found is None:
                continue  # never reached the platform: nothing to remove
            platform_id = found.contact_id
            async with transaction(session_factory) as session:
                await repository.set_platform_contact_id(session, item.contact.id, platform_id)
            item.contact.platform_contact_id = platform_id
        removals.append((platform_id, gone))
    for list_ids, contact_ids in membership_batches(removals):
        activity = await client.remove_list_memberships(contact_ids, list_ids)
        done = await client.wait_for_activity(activity.activity_id, interval=poll_interval)
        if done.state != "completed":
            raise PlatformError(
                None,
                f"activity_{done.state}",
                "; ".join(done.activity_errors) or f"list removal {done.state}",
                retryable=True,
                endpoint="remove_list_memberships",
            )
        report.removed += len(contact_ids)


async def _sign_up(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    work: Sequence[_Work],
    fields: dict[str, PlatformCustomField],
    report: SyncReport,
    pending: set[int],
) -> None:
    for item in work:
        contact = item.contact
        pending.discard(contact.id)
        if not item.desired:
            async with transaction(session_factory) as session:
                await repository.mark_synced(session, contact.id, item.version, [], utcnow())
            continue
        if len(contact.email) > MAX_EMAIL_LENGTH:
            async with transaction(session_factory) as session:
                await repository.mark_error(
                    session, contact.id, item.version, "email address longer than 50 characters"
                )
            report.errors += 1
            continue
        first, last = split_name(contact.name)
        form = SignUpForm(
            email_address=contact.email,
            list_memberships=item.desired,
            first_name=first,
            last_name=last,
            custom_fields=[
                {"custom_field_id": fields[key.value].custom_field_id, "value": value}
                for key, value in field_values(contact).items()
                if key.value in fields
            ],
        )
        async with transaction(session_factory) as session:
            still_permitted = await repository.permitted(session, [contact.id])
        if contact.id not in still_permitted:
            continue  # consent changed since the run read it: the next run sees why
        try:
            result = await client.sign_up_form(form)
        except PlatformError as exc:
            if exc.retryable:
                pending.add(contact.id)
                raise
            async with transaction(session_factory) as session:
                await repository.mark_error(session, contact.id, item.version, exc.message)
            report.errors += 1
            continue
        async with transaction(session_factory) as session:
            await repository.mark_synced(
                session, contact.id, item.version, item.desired, utcnow(), result.contact_id
            )
        report.signed_up += 1
        item.contact.platform_contact_id = result.contact_id
