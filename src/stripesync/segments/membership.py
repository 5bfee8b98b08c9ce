"""Segment membership, recomputed with set-based SQL: one statement computes every scoped
contact's desired segments from the compiled rules, compares them with the stored
memberships, and applies only the differences (bumping the version of each contact whose
memberships changed, unless its transaction already did, and storing `segment.entered` /
`segment.exited` triggers).

Who can be a member at all: only contacts whose consent_state is in PERMITTED_CONSENT.
Segment `all` is exactly "every contact with permission"; every other segment is that set
narrowed by its rule. A contact without permission belongs to no segment, so it is on no
platform list.

Two callers, two locking disciplines that cannot deadlock with each other:
- contacts-changed (a few contacts, inside the event's transaction): locks those contacts
  first (in id order), so the diff sees their latest state, then the segments whose
  counts change (in id order).
- full or per-segment recompute (many contacts): locks the scoped segments first (in id
  order), then applies changes only to contacts it can lock without waiting and whose
  version is still the one it read (`FOR UPDATE SKIP LOCKED`). A contact skipped that way
  is being changed by a transaction that recomputes it itself (or, at worst, by the next
  scheduled recompute). Counts are then recounted exactly.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import PERMITTED_CONSENT
from stripesync.segments.rules import Rule, SqlParams, compile_rule, parse_rule

PERMITTED = [state.value for state in PERMITTED_CONSENT]
LOCK_SEGMENTS = (
    "SELECT id FROM segments WHERE id = ANY(CAST(:ids AS bigint[])) ORDER BY id FOR NO KEY UPDATE"
)


@dataclass(frozen=True)
class ScopedSegment:
    id: int
    rule: Rule | None


@dataclass(frozen=True)
class RecomputeResult:
    contacts_changed: int = 0
    entered: int = 0
    exited: int = 0


def permitted_filter(alias: str = "c") -> str:
    """SQL: the contact may be on lists at all (binds `permitted`)."""
    return f"{alias}.consent_state = ANY(CAST(:permitted AS text[]))"


async def live_segments(
    session: AsyncSession, account_id: str, segment_ids: Collection[int] | None = None
) -> list[ScopedSegment]:
    sql = "SELECT id, rule FROM segments WHERE account_id = :a AND deleted_at IS NULL"
    params: dict[str, Any] = {"a": account_id}
    if segment_ids is not None:
        sql += " AND id = ANY(CAST(:ids AS bigint[]))"
        params["ids"] = list(segment_ids)
    rows = (await session.execute(text(sql + " ORDER BY id"), params)).all()
    return [
        ScopedSegment(int(r.id), parse_rule(r.rule) if r.rule is not None else None) for r in rows
    ]


# The tail shared by both diff statements: the outbox rows of the memberships that
# changed, and per segment (entered, exited), then (NULL, contacts whose memberships
# changed).
_CHANGES_AND_OUTBOX = """changes AS (
    SELECT contact_id, segment_id, 'segment.entered' AS event FROM inserted
    UNION ALL
    SELECT contact_id, segment_id, 'segment.exited' AS event FROM deleted
),
outbox AS (
    INSERT INTO automation_outbox (account_id, message_id, event_type, payload, next_attempt_at)
    SELECT CAST(:account_id AS text),
           'msg_' || replace(CAST(gen_random_uuid() AS text), '-', ''),
           ch.event,
           jsonb_build_object(
               'type', ch.event,
               'timestamp', CAST(:now_iso AS text),
               'data', jsonb_build_object(
                   'account_id', CAST(:account_id AS text),
                   'segment', jsonb_build_object(
                       'id', CAST(s.id AS text), 'key', s.key, 'name', s.name),
                   'contact', jsonb_build_object(
                       'id', CAST(c.id AS text), 'email', c.email, 'name', c.name))),
           CAST(:now AS timestamptz)
    FROM changes ch
    JOIN contacts c ON c.id = ch.contact_id
    JOIN segments s ON s.id = ch.segment_id
    WHERE CAST(:automation AS boolean)
    RETURNING 1
)
SELECT segment_id,
       count(*) FILTER (WHERE event = 'segment.entered') AS entered,
       count(*) FILTER (WHERE event = 'segment.exited') AS exited
FROM changes GROUP BY segment_id
UNION ALL
SELECT NULL, (SELECT count(*) FROM bumped), 0
"""


def _diff_statement(segments: Sequence[ScopedSegment], params: SqlParams) -> str:
    """The diff of the contacts `:contact_ids`: each one's memberships looked up beside it
    (a join with all the segments' memberships walked them all, for every batch)."""
    cases = ",\n".join(
        f"CASE WHEN {compile_rule(s.rule, params)} THEN CAST({int(s.id)} AS bigint) END"
        for s in segments
    )
    contact_filter = " AND c.id = ANY(CAST(:contact_ids AS bigint[]))"
    empty = "CAST('{}' AS bigint[])"
    desired = f"""CASE WHEN {permitted_filter()}
                THEN array_remove(ARRAY[{cases}], NULL)
                ELSE {empty} END"""
    # Only whitelisted column names, segment ids (ints) and bind parameter names are
    # interpolated; every value is a bound parameter (rules.SqlParams).
    return f"""
WITH scoped AS (
    SELECT c.id AS contact_id, c.version, {desired} AS desired, m.stored
    FROM contacts c CROSS JOIN LATERAL (
        SELECT COALESCE(array_agg(cs.segment_id ORDER BY cs.segment_id), {empty}) AS stored
        FROM contact_segments cs
        WHERE cs.contact_id = c.id AND cs.segment_id = ANY(CAST(:segment_ids AS bigint[]))
    ) m
    WHERE c.account_id = CAST(:account_id AS text){contact_filter}
),
diff AS (
    SELECT contact_id, version, desired, stored FROM scoped
    WHERE desired IS DISTINCT FROM stored
),
-- A contact this transaction already wrote with a new version (the activity refresh just
-- before, in the same transaction) keeps that version: its membership changes commit with
-- it, so a second bump would only rewrite the row. Only a row still ahead of its synced
-- version counts (a write that settled the contact's sync is no bump). This rests on every
-- writer of a contact's synced fields bumping `version` in its own transaction.
gate AS (
    SELECT c.id, d.desired, d.stored,
        c.xmin = CAST(pg_current_xact_id() AS xid) AND c.version > c.synced_version
            AS bumped_already
    FROM contacts c JOIN diff d ON d.contact_id = c.id
    WHERE c.version = d.version{contact_filter}
    FOR UPDATE OF c SKIP LOCKED
),
bump AS (
    UPDATE contacts c SET version = c.version + 1, updated_at = CAST(:now AS timestamptz)
    FROM gate g WHERE c.id = g.id AND NOT g.bumped_already{contact_filter}
),
bumped AS (SELECT id AS contact_id, desired, stored FROM gate),
entered AS (
    SELECT b.contact_id, x.segment_id
    FROM bumped b CROSS JOIN LATERAL unnest(b.desired) AS x(segment_id)
    WHERE NOT (x.segment_id = ANY(b.stored))
),
exited AS (
    SELECT b.contact_id, x.segment_id
    FROM bumped b CROSS JOIN LATERAL unnest(b.stored) AS x(segment_id)
    WHERE NOT (x.segment_id = ANY(b.desired))
),
inserted AS (
    INSERT INTO contact_segments (contact_id, segment_id, entered_at)
    SELECT contact_id, segment_id, CAST(:now AS timestamptz) FROM entered
    ON CONFLICT DO NOTHING
    RETURNING contact_id, segment_id
),
deleted AS (
    DELETE FROM contact_segments cs USING exited e
    WHERE cs.contact_id = e.contact_id AND cs.segment_id = e.segment_id
    RETURNING cs.contact_id, cs.segment_id
),
{_CHANGES_AND_OUTBOX}
"""  # noqa: S608


async def _apply_diff(
    session: AsyncSession,
    account_id: str,
    segments: Sequence[ScopedSegment],
    *,
    now: datetime,
    automation: bool,
    contact_ids: Collection[int],
) -> tuple[dict[int, tuple[int, int]], int]:
    """Run the diff statement: ({segment id: (entered, exited)}, contacts whose
    memberships changed)."""
    params = SqlParams()
    sql = _diff_statement(segments, params)
    values: dict[str, Any] = {
        **params.values,
        "account_id": account_id,
        "segment_ids": [s.id for s in segments],
        "permitted": PERMITTED,
        "now": now,
        "now_iso": now.isoformat().replace("+00:00", "Z"),
        "automation": automation,
        "contact_ids": list(contact_ids),
    }
    changes: dict[int, tuple[int, int]] = {}
    bumped = 0
    for segment_id, entered, exited in (await session.execute(text(sql), values)).all():
        if segment_id is None:
            bumped = int(entered)
        else:
            changes[int(segment_id)] = (int(entered), int(exited))
    return changes, bumped


async def recompute_contacts(
    session: AsyncSession,
    account_id: str,
    contact_ids: Collection[int],
    *,
    now: datetime,
    automation: bool,
) -> RecomputeResult:
    """Recompute every segment for these contacts, in the caller's transaction."""
    ids = sorted({int(i) for i in contact_ids})
    segments = await live_segments(session, account_id)
    if not ids or not segments:
        return RecomputeResult()
    await session.execute(
        text(
            "SELECT id FROM contacts WHERE account_id = :a AND id = ANY(CAST(:ids AS bigint[]))"
            " ORDER BY id FOR NO KEY UPDATE"
        ),
        {"a": account_id, "ids": ids},
    )
    changes, bumped = await _apply_diff(
        session, account_id, segments, now=now, automation=automation, contact_ids=ids
    )
    deltas = {sid: entered - exited for sid, (entered, exited) in changes.items()}
    changed = sorted(sid for sid, delta in deltas.items() if delta)
    if changed:
        # Lock every live segment of the account, not only the changed ones: a transaction
        # may call this again (an import's batch of pages), and locks taken a few at a time
        # across calls would not be in one order across transactions.
        await session.execute(text(LOCK_SEGMENTS), {"ids": sorted(s.id for s in segments)})
        await session.execute(
            text(
                "UPDATE segments s SET member_count = s.member_count + v.delta"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) AS v(id, delta)"
                " WHERE s.id = v.id"
            ),
            {"ids": changed, "deltas": [deltas[sid] for sid in changed]},
        )
    return _counts(changes, bumped)


async def recompute_segments(
    session: AsyncSession,
    account_id: str,
    *,
    now: datetime,
    automation: bool,
    segment_ids: Collection[int] | None = None,
) -> RecomputeResult:
    """Recompute these segments (default: all of the account's) for all its contacts,
    then recount their members exactly. Run it in a transaction of its own.

    Two steps: a read-only statement finds the contacts whose memberships differ (Postgres
    may run it in parallel; it writes nothing, so it can), then a second one applies only
    those differences. A recompute that finds no difference writes nothing but the counts
    that drifted (contacts deleted since drop their memberships by cascade)."""
    segments = await live_segments(session, account_id, segment_ids)
    if not segments:
        return RecomputeResult()
    ids = [s.id for s in segments]
    await session.execute(text(LOCK_SEGMENTS), {"ids": ids})
    # The diff hashes one row per contact; give it room instead of spilling to disk.
    await session.execute(text("SET LOCAL work_mem = '256MB'"))
    params = SqlParams()
    await session.execute(text(f"DROP TABLE IF EXISTS pg_temp.{DIFF_TABLE}"))
    await session.execute(
        text(_find_differences(segments, params)),
        {
            **params.values,
            "account_id": account_id,
            "segment_ids": ids,
            "permitted": PERMITTED,
            "now": now,
        },
    )
    differing = await session.scalar(text(f"SELECT count(*) FROM {DIFF_TABLE}"))  # noqa: S608
    changes: dict[int, tuple[int, int]] = {}
    bumped = 0
    if differing:
        await session.execute(text(f"ANALYZE {DIFF_TABLE}"))
        rows = await session.execute(
            text(_apply_differences(len(segments))),
            {
                "account_id": account_id,
                "segment_ids": ids,
                "now": now,
                "now_iso": now.isoformat().replace("+00:00", "Z"),
                "automation": automation,
            },
        )
        for segment_id, entered, exited in rows.all():
            if segment_id is None:
                bumped = int(entered)
            else:
                changes[int(segment_id)] = (int(entered), int(exited))
    await session.execute(text(f"DROP TABLE {DIFF_TABLE}"))
    await recount(session, ids)
    return _counts(changes, bumped)


# Each contact's memberships of the scoped segments as bit masks: segment i of the scoped
# list is bit i % 62 of mask i // 62 (one mask for up to 62 segments, which is every account
# today: 9 built-ins + at most 50 custom). Comparing two bigints per contact is much
# cheaper than building and comparing arrays, and bit_or aggregates in parallel.
MASK_BITS = 62
DIFF_TABLE = "segment_membership_diff"


def _masks(count: int) -> range:
    return range((count + MASK_BITS - 1) // MASK_BITS)


def _find_differences(segments: Sequence[ScopedSegment], params: SqlParams) -> str:
    """CREATE TEMP TABLE of (contact_id, version, d0, s0, ...): the contacts whose desired
    masks (d) differ from their stored ones (s). Read-only over contacts."""
    desired = []
    stored = []
    for k in _masks(len(segments)):
        chunk = segments[k * MASK_BITS : (k + 1) * MASK_BITS]
        bits = " | ".join(
            f"(CASE WHEN {compile_rule(s.rule, params)} THEN {1 << i} ELSE 0 END)"
            for i, s in enumerate(chunk)
        )
        desired.append(
            f"CASE WHEN {permitted_filter()} THEN CAST({bits} AS bigint) ELSE 0 END AS d{k}"
        )
        stored.append(
            f"bit_or(CASE WHEN seg.pos / {MASK_BITS} = {k}"
            f" THEN CAST(1 AS bigint) << (seg.pos % {MASK_BITS}) END) AS s{k}"
        )
    columns = ", ".join(f"sc.d{k}, COALESCE(st.s{k}, 0) AS s{k}" for k in _masks(len(segments)))
    differs = " OR ".join(f"sc.d{k} <> COALESCE(st.s{k}, 0)" for k in _masks(len(segments)))
    # Only whitelisted column names, integers and bind parameter names are interpolated;
    # every value is a bound parameter (rules.SqlParams).
    return f"""
CREATE TEMP TABLE {DIFF_TABLE} ON COMMIT DROP AS
WITH seg AS (
    SELECT u.id, CAST(u.ord - 1 AS integer) AS pos
    FROM unnest(CAST(:segment_ids AS bigint[])) WITH ORDINALITY AS u(id, ord)
),
stored AS (
    SELECT cs.contact_id, {", ".join(stored)}
    FROM contact_segments cs JOIN seg ON seg.id = cs.segment_id
    GROUP BY cs.contact_id
),
scoped AS (
    SELECT c.id, c.version, {", ".join(desired)}
    FROM contacts c
    WHERE c.account_id = CAST(:account_id AS text)
)
SELECT sc.id AS contact_id, sc.version, {columns}
FROM scoped sc LEFT JOIN stored st ON st.contact_id = sc.id
WHERE {differs}
"""  # noqa: S608


def _apply_differences(count: int) -> str:
    """Apply the differences found (the temp table) to the contacts still at the version
    read and lockable without waiting; per segment (entered, exited), then (bumped, 0)."""
    gate_masks = ", ".join(f"d.d{k}, d.s{k}" for k in _masks(count))
    bumped_masks = ", ".join(f"g.d{k}, g.s{k}" for k in _masks(count))
    desired = " ".join(f"WHEN {k} THEN b.d{k}" for k in _masks(count))
    stored = " ".join(f"WHEN {k} THEN b.s{k}" for k in _masks(count))
    bit = f"(CAST(1 AS bigint) << (seg.pos % {MASK_BITS}))"
    return f"""
WITH seg AS (
    SELECT u.id, CAST(u.ord - 1 AS integer) AS pos
    FROM unnest(CAST(:segment_ids AS bigint[])) WITH ORDINALITY AS u(id, ord)
),
gate AS (
    SELECT c.id, {gate_masks}
    FROM {DIFF_TABLE} d JOIN contacts c ON c.id = d.contact_id
    -- Reach the contacts by primary key whatever the statistics say (a scan of every
    -- contact would cost more than the few thousand differences usually found).
    WHERE c.id = ANY(ARRAY(SELECT contact_id FROM {DIFF_TABLE})) AND c.version = d.version
    ORDER BY c.id
    FOR UPDATE OF c SKIP LOCKED
),
bumped AS (
    UPDATE contacts c SET version = c.version + 1, updated_at = CAST(:now AS timestamptz)
    FROM gate g WHERE c.id = g.id
    RETURNING c.id AS contact_id, {bumped_masks}
),
moves AS (
    SELECT b.contact_id, seg.id AS segment_id,
           (CASE seg.pos / {MASK_BITS} {desired} END) & {bit} <> 0 AS desired,
           (CASE seg.pos / {MASK_BITS} {stored} END) & {bit} <> 0 AS stored
    FROM bumped b CROSS JOIN seg
),
inserted AS (
    INSERT INTO contact_segments (contact_id, segment_id, entered_at)
    SELECT contact_id, segment_id, CAST(:now AS timestamptz) FROM moves
    WHERE desired AND NOT stored
    ON CONFLICT DO NOTHING
    RETURNING contact_id, segment_id
),
deleted AS (
    DELETE FROM contact_segments cs USING moves m
    WHERE cs.contact_id = m.contact_id AND cs.segment_id = m.segment_id
      AND m.stored AND NOT m.desired
    RETURNING cs.contact_id, cs.segment_id
),
{_CHANGES_AND_OUTBOX}
"""  # noqa: S608


async def recount(session: AsyncSession, segment_ids: Sequence[int]) -> None:
    """Set member_count to the exact number of stored memberships (also repairs counts after
    contacts were deleted, which drops their memberships by cascade). Counting is a
    read-only statement of its own (an index-only scan Postgres may run in parallel); only
    the counts that differ are written."""
    ids = list(segment_ids)
    rows = await session.execute(
        text(
            """
SELECT s.id, COALESCE(n.count, 0) AS count
FROM segments s
LEFT JOIN (
    SELECT segment_id, count(*) AS count FROM contact_segments
    WHERE segment_id = ANY(CAST(:ids AS bigint[])) GROUP BY segment_id
) n ON n.segment_id = s.id
WHERE s.id = ANY(CAST(:ids AS bigint[])) AND s.member_count <> COALESCE(n.count, 0)
"""
        ),
        {"ids": ids},
    )
    drifted = rows.all()
    if drifted:
        await session.execute(
            text(
                "UPDATE segments s SET member_count = v.count"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:counts AS bigint[])) AS v(id, count)"
                " WHERE s.id = v.id"
            ),
            {"ids": [int(r[0]) for r in drifted], "counts": [int(r[1]) for r in drifted]},
        )


def _counts(changes: dict[int, tuple[int, int]], bumped: int) -> RecomputeResult:
    return RecomputeResult(
        contacts_changed=bumped,
        entered=sum(entered for entered, _ in changes.values()),
        exited=sum(exited for _, exited in changes.values()),
    )
