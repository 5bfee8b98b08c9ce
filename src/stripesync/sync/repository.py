"""All SQL of the sync engine."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    String,
    Text,
    any_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.types import NullType

from stripesync.models import (
    PERMITTED_CONSENT,
    Account,
    Contact,
    ContactSegment,
    PlatformCustomField,
    Segment,
    SyncBatch,
)
from stripesync.models.sync import BatchState, SyncState


def _any_id(ids: Collection[int]) -> ColumnElement[bool]:
    # One array parameter: `IN (...)` would bind one parameter per id, and Postgres takes
    # at most 32,767 of them (an import batch holds 40,000 contacts).
    return any_(bindparam(None, [int(i) for i in ids], type_=ARRAY(BigInteger)))


async def lagging_contacts(
    session: AsyncSession, account_id: str, now: datetime, limit: int
) -> Sequence[Contact]:
    """Contacts whose pushed version lags their version and that are not deferred."""
    stmt = (
        select(Contact)
        .where(
            Contact.account_id == account_id,
            Contact.synced_version < Contact.version,
            (Contact.sync_deferred_until.is_(None)) | (Contact.sync_deferred_until <= now),
        )
        .order_by(Contact.id)
        .limit(limit)
    )
    return (await session.scalars(stmt)).all()


async def segment_lists(session: AsyncSession, account_id: str) -> dict[int, str]:
    """The platform list id of each live segment of the account that has one."""
    rows = await session.execute(
        select(Segment.id, Segment.platform_list_id).where(
            Segment.account_id == account_id,
            Segment.deleted_at.is_(None),
            Segment.platform_list_id.is_not(None),
            Segment.platform_list_id != "",
        )
    )
    return {segment_id: list_id for segment_id, list_id in rows if list_id}


async def lagging_rows(
    session: AsyncSession,
    account_id: str,
    now: datetime,
    limit: int,
    chunk: int,
    segment_ids: Collection[int],
) -> AsyncGenerator[Sequence[Any], None]:
    """The lagging contacts (at most `limit`), `chunk` rows at a time in id order, as
    plain rows of only what a push needs, with `segments`: which of `segment_ids`, the
    segments with a platform list, the contact is in (their ids sorted and
    comma-separated, or None). `synced_lists` is None when empty.

    One statement read through a server-side cursor, its rows coming as the database
    reads them (ordered by `segments`, the first waited for every contact's: 0.4 s of
    100,000). The database only reads each contact's segment ids off the membership
    index: joining the segments for their list ids per contact took it twice as long,
    so the caller maps ids to lists, once per distinct set. Whatever Python would
    decode per row (JSON, arrays, ORM rows) is left to the database or the driver
    (`total_spent` comes as JSON text, and the statement runs as Core on the session's
    connection): per-row work in Python cost more than the query (100,000 rows a run)."""
    # ARRAY(SELECT ...) of the ids in the membership index's order: a third cheaper for
    # the database than string_agg(... ORDER BY ...), which sorts each contact's ids.
    segment_ids_in = (
        select(ContactSegment.segment_id)
        .where(
            ContactSegment.contact_id == Contact.id,
            ContactSegment.segment_id == _any_id(segment_ids),
        )
        .order_by(ContactSegment.segment_id)
        .scalar_subquery()
    )
    segments = func.nullif(
        func.array_to_string(func.array(segment_ids_in), literal_column("','")),
        literal_column("''"),
    )
    segments_column = type_coerce(segments, NullType()).label("segments")
    stmt = (
        select(
            Contact.id,
            Contact.version,
            Contact.consent_state,
            Contact.email,
            Contact.name,
            Contact.country,
            Contact.purchase_count,
            cast(Contact.total_spent, Text).label("total_spent"),
            Contact.last_purchase_at,
            type_coerce(
                func.nullif(Contact.synced_lists, literal_column("'{}'")), NullType()
            ).label("synced_lists"),
            Contact.platform_contact_id,
            segments_column,
        )
        .where(
            Contact.account_id == account_id,
            Contact.synced_version < Contact.version,
            (Contact.sync_deferred_until.is_(None)) | (Contact.sync_deferred_until <= now),
        )
        .order_by(Contact.id)
        .limit(limit)
        .execution_options(yield_per=chunk)
    )
    connection = await session.connection()
    result = await connection.stream(stmt)
    try:
        async for rows in result.partitions(chunk):
            yield rows
    finally:
        await result.close()


async def custom_fields(session: AsyncSession, account_id: str) -> dict[str, PlatformCustomField]:
    rows = await session.scalars(
        select(PlatformCustomField).where(PlatformCustomField.account_id == account_id)
    )
    return {row.key: row for row in rows}


async def mark_synced(
    session: AsyncSession,
    contact_id: int,
    version: int,
    lists: Sequence[str],
    now: datetime,
    platform_contact_id: str | None = None,
) -> None:
    """The platform has `version` of the contact; still `pending` if it changed since."""
    values: dict[str, object] = {
        "synced_version": version,
        "synced_lists": list(lists),
        "synced_at": now,
        "sync_error": None,
        "sync_deferred_until": None,
        "sync_state": case(
            (Contact.version > version, SyncState.PENDING.value), else_=SyncState.OK.value
        ),
    }
    if platform_contact_id is not None:
        values["platform_contact_id"] = platform_contact_id
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id, Contact.synced_version < version)
        .values(**values)
    )


async def mark_synced_many(
    session: AsyncSession, versions: Mapping[int, int], lists: Sequence[str], now: datetime
) -> None:
    """`mark_synced` for many contacts (id → version) in one statement."""
    if not versions:
        return
    await session.execute(
        text(
            """
            UPDATE contacts c SET synced_version = v.version, synced_lists = :lists,
                synced_at = :now, sync_error = NULL, sync_deferred_until = NULL,
                sync_state = CASE WHEN c.version > v.version THEN 'pending' ELSE 'ok' END
            FROM unnest(CAST(:ids AS bigint[]), CAST(:versions AS bigint[])) AS v(id, version)
            WHERE c.id = v.id AND c.synced_version < v.version
            """
        ).bindparams(bindparam("lists", type_=ARRAY(String(64)))),
        {
            "lists": list(lists),
            "now": now,
            "ids": list(versions),
            "versions": list(versions.values()),
        },
    )


async def mark_error_many(session: AsyncSession, versions: Mapping[int, int], message: str) -> None:
    """`mark_error` for many contacts (id → version) in one statement."""
    if not versions:
        return
    await session.execute(
        text(
            """
            UPDATE contacts c SET synced_version = v.version, sync_state = 'error',
                sync_error = :message
            FROM unnest(CAST(:ids AS bigint[]), CAST(:versions AS bigint[])) AS v(id, version)
            WHERE c.id = v.id AND c.synced_version < v.version
            """
        ),
        {"message": message[:1000], "ids": list(versions), "versions": list(versions.values())},
    )


async def mark_error(session: AsyncSession, contact_id: int, version: int, message: str) -> None:
    """The platform refused this version for good: shown, and not retried until it changes."""
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id, Contact.synced_version < version)
        .values(
            synced_version=version,
            sync_state=SyncState.ERROR.value,
            sync_error=message[:1000],
        )
    )


async def mark_deferred(
    session: AsyncSession, contact_ids: Collection[int], until: datetime
) -> None:
    if contact_ids:
        await session.execute(
            update(Contact)
            .where(Contact.id == _any_id(contact_ids))
            .values(sync_state=SyncState.DEFERRED.value, sync_deferred_until=until)
        )


async def set_platform_contact_id(
    session: AsyncSession, contact_id: int, platform_contact_id: str
) -> None:
    await session.execute(
        update(Contact)
        .where(Contact.id == contact_id)
        .values(platform_contact_id=platform_contact_id)
    )


async def started_batches(session: AsyncSession, account_id: str) -> Sequence[SyncBatch]:
    stmt = select(SyncBatch).where(
        SyncBatch.account_id == account_id, SyncBatch.state == BatchState.STARTED.value
    )
    return (await session.scalars(stmt.order_by(SyncBatch.id))).all()


async def set_batch_activity(session: AsyncSession, batch_id: int, activity_id: str) -> None:
    await session.execute(
        update(SyncBatch).where(SyncBatch.id == batch_id).values(activity_id=activity_id)
    )


async def note_lists_maybe_added(
    session: AsyncSession, contact_ids: Collection[int], list_ids: Sequence[str]
) -> None:
    """The platform may have put these contacts on these lists: say so in `synced_lists`,
    so that the next run's removals (which go first) take the contacts off any list they
    no longer belong on. Removing a contact from a list it is not on is harmless.

    Before an import is sent, its batch row (committed first) is the write-ahead record
    of this; it is written out here when the import's outcome is not a plain success: a
    failed activity, rows the platform refused, or an answer that never came (see
    `note_batch_lists`)."""
    if not contact_ids or not list_ids:
        return
    await session.execute(
        text(
            """
            UPDATE contacts SET synced_lists = ARRAY(
                SELECT DISTINCT l FROM unnest(synced_lists || CAST(:lists AS varchar[])) AS l
                ORDER BY l)
            WHERE id = ANY(CAST(:ids AS bigint[]))
              AND NOT (synced_lists @> CAST(:lists AS varchar[]))
            """
        ),
        {"ids": list(contact_ids), "lists": list(list_ids)},
    )


async def note_batch_lists(session: AsyncSession, batch_id: int) -> None:
    """`note_lists_maybe_added` for every contact of an import batch, from its row."""
    await session.execute(
        text(
            """
            UPDATE contacts c SET synced_lists = ARRAY(
                SELECT DISTINCT l FROM unnest(c.synced_lists || b.list_ids) AS l ORDER BY l)
            FROM sync_batches b, jsonb_object_keys(b.contacts) AS k(id)
            WHERE b.id = :batch AND c.id = CAST(k.id AS bigint)
              AND NOT (c.synced_lists @> b.list_ids)
            """
        ),
        {"batch": batch_id},
    )


async def mark_batch_synced(
    session: AsyncSession, batch_id: int, now: datetime, excluding: Collection[int] = ()
) -> None:
    """`mark_synced` for the contacts of an import batch (but `excluding`) at the versions
    it holds, onto its lists: one statement from the batch row."""
    await session.execute(
        text(
            """
            UPDATE contacts c SET synced_version = v.version, synced_lists = v.list_ids,
                synced_at = :now, sync_error = NULL, sync_deferred_until = NULL,
                sync_state = CASE WHEN c.version > v.version THEN 'pending' ELSE 'ok' END
            FROM (
                SELECT CAST(e.key AS bigint) AS id, CAST(e.value AS bigint) AS version, b.list_ids
                FROM sync_batches b, jsonb_each_text(b.contacts) AS e
                WHERE b.id = :batch
            ) AS v
            WHERE c.id = v.id AND c.synced_version < v.version
              AND NOT (v.id = ANY(CAST(:excluding AS bigint[])))
            """
        ),
        {"batch": batch_id, "now": now, "excluding": [int(i) for i in excluding]},
    )


async def permitted(session: AsyncSession, contact_ids: Collection[int]) -> set[int]:
    """Which of these contacts have permission right now (read just before a push)."""
    if not contact_ids:
        return set()
    rows = await session.scalars(
        select(Contact.id).where(
            Contact.id == _any_id(contact_ids),
            Contact.consent_state.in_([str(s) for s in PERMITTED_CONSENT]),
        )
    )
    return set(rows)


async def without_permission(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> set[int]:
    """Which of these contacts of the account have no permission right now (read just
    before a push). Usually none: only those come back.

    Many ids close together (an import batch) are checked by one range scan of the
    account's contacts, cheaper than one index probe per id."""
    if not contact_ids:
        return set()
    denied = Contact.consent_state.not_in([str(s) for s in PERMITTED_CONSENT])
    low, high = min(contact_ids), max(contact_ids)
    if high - low < 4 * len(contact_ids):
        rows = await session.scalars(
            select(Contact.id).where(
                Contact.account_id == account_id, Contact.id.between(low, high), denied
            )
        )
        return set(rows).intersection(contact_ids)
    rows = await session.scalars(
        select(Contact.id).where(
            Contact.account_id == account_id, Contact.id == _any_id(contact_ids), denied
        )
    )
    return set(rows)


async def defer_lagging(session: AsyncSession, account_id: str, until: datetime) -> int:
    """Every lagging contact of the account waits until `until` (out of daily quota)."""
    result = await session.execute(
        update(Contact)
        .where(Contact.account_id == account_id, Contact.synced_version < Contact.version)
        .values(sync_state=SyncState.DEFERRED.value, sync_deferred_until=until)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def accounts_to_sync(session: AsyncSession, now: datetime) -> list[str]:
    """Accounts with contacts whose pushed version lags and whose deferral (if any) passed.

    Accounts without Constant Contact credentials, or whose refresh was refused, wait
    for new credentials instead."""
    lagging = (
        select(Contact.account_id)
        .where(
            Contact.synced_version < Contact.version,
            (Contact.sync_deferred_until.is_(None)) | (Contact.sync_deferred_until <= now),
        )
        .distinct()
    )
    stmt = (
        select(Account.id)
        .where(
            Account.id.in_(lagging),
            Account.cc_access_token_encrypted.is_not(None),
            Account.cc_token_error.is_(None),
        )
        .order_by(Account.id)
    )
    return list((await session.scalars(stmt)).all())
