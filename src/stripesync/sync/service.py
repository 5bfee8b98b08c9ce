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
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import structlog

from stripesync.clients.constant_contact import (
    MAX_EMAIL_LENGTH,
    Activity,
    ConstantContactClient,
    PlatformError,
    SignUpForm,
)
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import QuotaExhausted
from stripesync.models import PERMITTED_CONSENT, ConsentState, PlatformCustomField
from stripesync.models.sync import BatchKind, BatchState, CustomFieldKey, SyncBatch
from stripesync.sync import repository
from stripesync.sync.batching import ImportBatch, ImportBatcher, membership_batches
from stripesync.sync.lists import (
    ensure_custom_fields,
    ensure_platform_lists,
    remove_deleted_segment_lists,
)
from stripesync.sync.metrics import SYNC_CONTACTS

log = structlog.get_logger(__name__)

# Lagging contacts are read this many at a time (keyset by id), as plain rows of only the
# columns a push needs: loading 100,000 ORM objects cost more than the platform's work.
READ_CHUNK = 10_000


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


class PushFields(Protocol):
    """What `field_values` reads: a `Contact`, or the sync engine's lighter row."""

    @property
    def purchase_count(self) -> int: ...
    @property
    def total_spent(self) -> dict[str, Any]: ...
    @property
    def last_purchase_at(self) -> datetime | None: ...


@dataclass(slots=True)
class _Contact:
    """The columns of a contact that a push needs (read with Core, not as an ORM entity)."""

    id: int
    consent_state: str
    email: str
    name: str | None
    country: str | None
    purchase_count: int
    total_spent: dict[str, Any]
    last_purchase_at: datetime | None
    synced_lists: list[str]
    platform_contact_id: str | None


@dataclass(slots=True)
class _Work:
    contact: _Contact
    version: int
    desired: list[str]


def field_values(contact: PushFields) -> dict[CustomFieldKey, str]:
    """The contact's custom field values as the platform takes them."""
    values = {CustomFieldKey.PURCHASE_COUNT: str(contact.purchase_count)}
    if len(contact.total_spent) == 1:
        (minor,) = contact.total_spent.values()
        values[CustomFieldKey.LIFETIME_SPEND] = f"{int(minor) / 100:.2f}"
    if contact.last_purchase_at is not None:
        values[CustomFieldKey.LAST_PURCHASE_DATE] = contact.last_purchase_at.date().isoformat()
    return values


def _names(contact: _Contact) -> tuple[str | None, str | None]:
    if not contact.name:
        return None, None
    first, _, last = contact.name.strip().partition(" ")
    return first[:50] or None, last.strip()[:50] or None


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
    try:
        await _resume_batches(session_factory, client, account_id, report, poll_interval)
        await remove_deleted_segment_lists(session_factory, client, account_id)
        await ensure_platform_lists(session_factory, client, account_id)
        fields = await ensure_custom_fields(session_factory, client, account_id)
        work, revoked = await _read_lagging(session_factory, account_id, limit, report)
        pending = {w.contact.id for w in work}
        pending_revoked = {w.contact.id for w in revoked}
        try:
            await _remove_lists(session_factory, client, [*revoked, *work], report, poll_interval)
            async with transaction(session_factory) as session:
                await repository.mark_synced_many(
                    session, {w.contact.id: w.version for w in revoked}, [], utcnow()
                )
            report.skipped += len(revoked)
            pending_revoked.clear()
            await _sign_up(session_factory, client, work, fields, report, pending)
            await _import(
                session_factory, client, account_id, work, fields, report, pending, poll_interval
            )
        except QuotaExhausted as exc:
            async with transaction(session_factory) as session:
                await repository.mark_deferred(session, pending | pending_revoked, exc.retry_at)
            report.deferred_until = exc.retry_at
            report.deferred = len(pending | pending_revoked)
    except QuotaExhausted as exc:
        # Out of quota before any contact was read: everyone lagging waits for tomorrow.
        async with transaction(session_factory) as session:
            report.deferred = await repository.defer_lagging(session, account_id, exc.retry_at)
        report.deferred_until = exc.retry_at
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
    session_factory: SessionFactory, account_id: str, limit: int, report: SyncReport
) -> tuple[list[_Work], list[_Work]]:
    """Read the lagging contacts chunk by chunk; answer (to push, to take off our lists).

    Contacts without permission are marked seen chunk by chunk and never leave."""
    work: list[_Work] = []
    revoked: list[_Work] = []
    now = utcnow()

    async def fetch(after: int, size: int) -> Sequence[Any]:
        async with transaction(session_factory) as session:
            return await repository.lagging_chunk(session, account_id, now, after, size)

    read = 0
    size = min(READ_CHUNK, limit)
    fetching: asyncio.Task[Sequence[Any]] | None = asyncio.create_task(fetch(0, size))
    try:
        while fetching is not None:
            rows = await fetching
            fetching = None
            read += len(rows)
            if len(rows) == size and read < limit:
                # The database reads the next chunk while this one is sorted out here.
                size = min(READ_CHUNK, limit - read)
                fetching = asyncio.create_task(fetch(rows[-1].id, size))
            unpermitted: dict[int, int] = {}
            for (
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
                desired,
            ) in rows:
                if consent not in PERMITTED_CONSENT and not synced_lists:
                    # Permission is sacred: nothing about this person leaves.
                    unpermitted[cid] = version
                    continue
                contact = _Contact(
                    cid,
                    consent,
                    email,
                    name,
                    country,
                    purchases,
                    {} if spent_json == "{}" else json.loads(spent_json),
                    last_purchase,
                    synced_lists or [],
                    platform_id,
                )
                if consent in PERMITTED_CONSENT:
                    work.append(_Work(contact, version, desired or []))
                else:
                    # Permission withdrawn after a push: take them off our lists (a removal
                    # sends nothing about the person and subscribes no one).
                    revoked.append(_Work(contact, version, []))
            if unpermitted:
                async with transaction(session_factory) as session:
                    await repository.mark_synced_many(session, unpermitted, [], utcnow())
                report.skipped += len(unpermitted)
    finally:
        if fetching is not None:
            fetching.cancel()
    return work, revoked


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
        # Only the first push of someone the platform never had uses sign_up_form: on a
        # contact that exists it would re-subscribe someone who unsubscribed on the platform
        # since. Every later update goes through the import, which never does.
        if (
            contact.consent_state != ConsentState.CONFIRMED
            or contact.platform_contact_id
            or contact.synced_lists
        ):
            continue
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
        first, last = _names(contact)
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


async def _import(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    account_id: str,
    work: Sequence[_Work],
    fields: dict[str, PlatformCustomField],
    report: SyncReport,
    pending: set[int],
    poll_interval: float,
) -> None:
    listless: dict[int, int] = {}  # no list to put them on (yet): nothing to push
    versions: dict[int, int] = {}
    batcher = ImportBatcher[int]()
    started: list[tuple[int, str, list[tuple[int, Mapping[str, str]]]]] = []
    # Rows are encoded (sized) once as they are built, and each batch is started as soon
    # as it fills, while the rest are still being built.
    for item in work:
        if item.contact.id not in pending:
            continue
        if not item.desired:
            listless[item.contact.id] = item.version
            continue
        versions[item.contact.id] = item.version
        row = _import_row(item.contact, fields)
        for batch in batcher.add(item.contact.id, item.desired, row):
            await _start_import(
                session_factory, client, account_id, batch, versions, pending, started
            )
    async with transaction(session_factory) as session:
        await repository.mark_synced_many(session, listless, [], utcnow())
    pending.difference_update(listless)
    for batch in batcher.flush():
        await _start_import(session_factory, client, account_id, batch, versions, pending, started)
    # Every import is started before any is awaited: the platform works on them side by
    # side, so the run takes about as long as the slowest, not the sum. Each finished
    # batch is recorded while the next one is polled.
    settling: list[asyncio.Task[None]] = []
    try:
        for batch_id, activity_id, sent in started:
            done = await client.wait_for_activity(activity_id, interval=poll_interval)
            settling.append(
                asyncio.create_task(_settle_batch(session_factory, batch_id, done, report, sent))
            )
    finally:
        outcomes = await asyncio.gather(*settling, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome


async def _start_import(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    account_id: str,
    batch: ImportBatch[int],
    versions: Mapping[int, int],
    pending: set[int],
    started: list[tuple[int, str, list[tuple[int, Mapping[str, str]]]]],
) -> None:
    async with transaction(session_factory) as session:
        # Consent may have changed since the run read it: drop whoever lost it (the
        # batch only shrinks, so it stays within the platform's limits).
        still_permitted = await repository.permitted(session, batch.keys)
        if len(still_permitted) < len(batch.keys):
            kept = [
                (k, r) for k, r in zip(batch.keys, batch.rows, strict=True) if k in still_permitted
            ]
            pending.difference_update(set(batch.keys) - still_permitted)
            batch.keys = [k for k, _ in kept]
            batch.rows = [r for _, r in kept]
        if not batch.keys:
            return
        record = SyncBatch(
            account_id=account_id,
            kind=BatchKind.JSON_IMPORT.value,
            list_ids=list(batch.list_ids),
            contacts={str(cid): versions[cid] for cid in batch.keys},
        )
        session.add(record)
        await repository.note_lists_maybe_added(session, batch.keys, batch.list_ids)
    activity = await client.contacts_json_import(batch.rows, batch.list_ids)
    async with transaction(session_factory) as session:
        stored = await session.get(SyncBatch, record.id)
        assert stored is not None
        stored.activity_id = activity.activity_id
    # From here the batch row tracks these contacts (a re-run resumes it).
    pending.difference_update(batch.keys)
    started.append(
        (record.id, activity.activity_id, list(zip(batch.keys, batch.rows, strict=True)))
    )


async def _resume_batches(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    account_id: str,
    report: SyncReport,
    poll_interval: float,
) -> None:
    """Finish what a run that died left started: poll its activity instead of re-importing."""
    async with transaction(session_factory) as session:
        batches = list(await repository.started_batches(session, account_id))
    for batch in batches:
        if batch.activity_id is None:
            # Died before the platform answered: the contacts still lag and go again.
            async with transaction(session_factory) as session:
                stored = await session.get(SyncBatch, batch.id)
                assert stored is not None
                stored.state = BatchState.FAILED.value
                stored.error = "run ended before the platform answered"
                stored.finished_at = utcnow()
            continue
        done = await client.wait_for_activity(batch.activity_id, interval=poll_interval)
        await _settle_batch(session_factory, batch.id, done, report, None)


_ROW = re.compile(r"\brow\s+(\d+)", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+\.[^\s@<>\"']+")


async def _settle_batch(
    session_factory: SessionFactory,
    batch_id: int,
    activity: Activity,
    report: SyncReport,
    rows: Sequence[tuple[int, Mapping[str, str]]] | None,
) -> None:
    """Record the activity's outcome on the batch and on each of its contacts.

    `rows` are the (contact id, row) pairs in the order sent, when known, so that errors
    naming a row or an email land on that contact; otherwise they stay on the batch.
    """
    now = utcnow()
    async with transaction(session_factory) as session:
        batch = await session.get(SyncBatch, batch_id, with_for_update=True)
        assert batch is not None
        if batch.state != BatchState.STARTED.value:
            return
        contact_versions = {int(cid): int(v) for cid, v in batch.contacts.items()}
        ids = list(contact_versions)
        batch.activity_errors = list(activity.activity_errors)
        batch.finished_at = now
        if activity.state != "completed":
            batch.state = BatchState.FAILED.value
            batch.error = "; ".join(activity.activity_errors) or f"activity {activity.state}"
            await repository.mark_error_many(session, contact_versions, batch.error)
            report.errors += len(ids)
            return
        batch.state = BatchState.COMPLETED.value
        failed = _failed_contacts(activity.activity_errors, rows)
        for cid, message in failed.items():
            await repository.mark_error(session, cid, contact_versions[cid], message)
        synced = {cid: v for cid, v in contact_versions.items() if cid not in failed}
        await repository.mark_synced_many(session, synced, list(batch.list_ids), now)
        report.errors += len(failed)
        report.imported += len(synced)


def _failed_contacts(
    errors: Sequence[str], rows: Sequence[tuple[int, Mapping[str, str]]] | None
) -> dict[int, str]:
    """Attribute activity errors to contacts by row index or by email, when they say."""
    rows = rows or []
    by_email = {row.get("email", "").lower(): cid for cid, row in rows}
    failed: dict[int, str] = {}
    for message in errors:
        row = _ROW.search(message)
        if row and int(row.group(1)) < len(rows):
            failed[rows[int(row.group(1))][0]] = message
            continue
        email = _EMAIL.search(message)
        if email and email.group(0).lower() in by_email:
            failed[by_email[email.group(0).lower()]] = message
    return failed


def _import_row(contact: _Contact, fields: dict[str, PlatformCustomField]) -> dict[str, str]:
    first, last = _names(contact)
    row = {"email": contact.email}
    if first:
        row["first_name"] = first
    if last:
        row["last_name"] = last
    if contact.country:
        row["country"] = contact.country
    for key, value in field_values(contact).items():
        if key.value in fields:
            row[f"cf:{fields[key.value].name}"] = value
    return row
