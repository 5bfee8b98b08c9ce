"""SQL of the segments feature (membership recompute lives in membership.py)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import Segment, SegmentKind, SegmentSettings
from stripesync.segments.builtins import BUILTINS, DEFAULT_THRESHOLDS, Thresholds
from stripesync.segments.membership import PERMITTED, permitted_filter
from stripesync.segments.rules import Rule, SqlParams, compile_rule


@dataclass(frozen=True)
class MemberRow:
    id: int
    email: str
    name: str | None
    purchase_count: int
    last_purchase_at: datetime | None


async def thresholds(session: AsyncSession, account_id: str) -> Thresholds:
    row = await session.get(SegmentSettings, account_id)
    if row is None:
        return DEFAULT_THRESHOLDS
    return Thresholds(
        recent_days=row.recent_days,
        lapsed_days=row.lapsed_days,
        refund_days=row.refund_days,
        high_value_min=row.high_value_min,
    )


async def save_thresholds(session: AsyncSession, account_id: str, values: Thresholds) -> None:
    data = values.model_dump()
    stmt = insert(SegmentSettings).values(account_id=account_id, **data)
    stmt = stmt.on_conflict_do_update(
        index_elements=[SegmentSettings.account_id], set_={**data, "updated_at": func.now()}
    )
    await session.execute(stmt)


async def builtin_keys(session: AsyncSession, account_id: str) -> set[str]:
    rows = await session.scalars(
        select(Segment.key).where(
            Segment.account_id == account_id, Segment.kind == SegmentKind.BUILTIN
        )
    )
    return {key for key in rows if key is not None}


async def insert_builtins(session: AsyncSession, account_id: str, values: Thresholds) -> list[int]:
    """Insert the built-in rows that are missing; the ids of those inserted."""
    rows = [
        {
            "account_id": account_id,
            "key": b.key,
            "name": b.name,
            "kind": SegmentKind.BUILTIN.value,
            "rule": b.rule(values),
        }
        for b in BUILTINS
    ]
    # No conflict target: two transactions creating the same account's built-ins at once
    # (an import's parallel pages) meet on the live-name index as well as on the key; the
    # one that waited inserts nothing and both go on.
    stmt = insert(Segment).values(rows).on_conflict_do_nothing().returning(Segment.id)
    return list((await session.scalars(stmt)).all())


async def set_builtin_rules(
    session: AsyncSession, account_id: str, values: Thresholds
) -> list[int]:
    """Rewrite the built-ins' rules for new thresholds; the ids whose rule changed."""
    rules = {b.key: b.rule(values) for b in BUILTINS}
    stmt = select(Segment).where(
        Segment.account_id == account_id, Segment.kind == SegmentKind.BUILTIN
    )
    changed: list[int] = []
    for segment in (await session.scalars(stmt.with_for_update())).all():
        new_rule = rules.get(segment.key or "")
        if segment.rule != new_rule:
            segment.rule = new_rule
            changed.append(segment.id)
    await session.flush()
    return changed


async def list_segments(session: AsyncSession, account_id: str) -> list[Segment]:
    stmt = (
        select(Segment)
        .where(Segment.account_id == account_id, Segment.deleted_at.is_(None))
        .order_by(Segment.kind, Segment.id)  # built-ins first, in the order of segments.md
    )
    return list((await session.scalars(stmt)).all())


async def get_segment(
    session: AsyncSession, account_id: str, segment_id: int, *, for_update: bool = False
) -> Segment | None:
    stmt = select(Segment).where(
        Segment.account_id == account_id,
        Segment.id == segment_id,
        Segment.deleted_at.is_(None),
    )
    if for_update:
        stmt = stmt.with_for_update()
    return (await session.scalars(stmt)).one_or_none()


async def count_custom(session: AsyncSession, account_id: str) -> int:
    stmt = select(func.count()).where(
        Segment.account_id == account_id,
        Segment.kind == SegmentKind.CUSTOM,
        Segment.deleted_at.is_(None),
    )
    return int(await session.scalar(stmt) or 0)


async def name_taken(
    session: AsyncSession, account_id: str, name: str, *, except_id: int | None = None
) -> bool:
    stmt = select(Segment.id).where(
        Segment.account_id == account_id,
        Segment.name == name,
        Segment.deleted_at.is_(None),
    )
    if except_id is not None:
        stmt = stmt.where(Segment.id != except_id)
    return (await session.scalar(stmt.limit(1))) is not None


async def lock_account_segments(session: AsyncSession, account_id: str) -> None:
    """Serialise segment creation per account, so the limit of 50 holds under races."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext('segments:' || CAST(:a AS text)))"),
        {"a": account_id},
    )


async def remove_memberships(session: AsyncSession, segment_id: int, now: datetime) -> int:
    """Take every member out of a segment, bumping their versions (their desired lists
    change); the number of contacts affected."""
    result = await session.execute(
        text(
            """
WITH gone AS (
    DELETE FROM contact_segments WHERE segment_id = :s RETURNING contact_id
)
UPDATE contacts c SET version = c.version + 1, updated_at = CAST(:now AS timestamptz)
FROM gone WHERE c.id = gone.contact_id
"""
        ),
        {"s": segment_id, "now": now},
    )
    return int(getattr(result, "rowcount", 0) or 0)


def _rule_where(rule: Rule | None, params: SqlParams) -> str:
    return (
        "c.account_id = CAST(:account_id AS text)"
        f" AND {permitted_filter()} AND {compile_rule(rule, params)}"
    )


async def preview(
    session: AsyncSession, account_id: str, rule: Rule | None, *, now: datetime, sample: int
) -> tuple[int, list[MemberRow]]:
    """How many contacts the rule selects right now, and the first few (by id)."""
    params = SqlParams()
    where = _rule_where(rule, params)
    values = {**params.values, "account_id": account_id, "permitted": PERMITTED, "now": now}
    count = await session.scalar(
        text(f"SELECT count(*) FROM contacts c WHERE {where}"),  # noqa: S608 (see rules.py)
        values,
    )
    rows = await session.execute(
        text(
            "SELECT c.id, c.email, c.name, c.purchase_count, c.last_purchase_at"  # noqa: S608
            f" FROM contacts c WHERE {where} ORDER BY c.id LIMIT :sample"
        ),
        {**values, "sample": sample},
    )
    return int(count or 0), [MemberRow(*row) for row in rows.all()]


async def members(
    session: AsyncSession, segment_id: int, *, after: int | None, limit: int
) -> list[MemberRow]:
    rows = await session.execute(
        text(
            """
SELECT c.id, c.email, c.name, c.purchase_count, c.last_purchase_at
FROM contact_segments cs JOIN contacts c ON c.id = cs.contact_id
WHERE cs.segment_id = :s AND cs.contact_id > :after
ORDER BY cs.contact_id
LIMIT :limit
"""
        ),
        {"s": segment_id, "after": after if after is not None else -1, "limit": limit},
    )
    return [MemberRow(*row) for row in rows.all()]


async def stripe_customer_ids(
    session: AsyncSession, contact_ids: Sequence[int]
) -> dict[int, list[str]]:
    """Each contact's Stripe customer ids, from the activity tables when they exist.

    The one place segments read the activity feature's tables; without them (or with no
    linked customers) a contact has no ids here.
    """
    if not contact_ids:
        return {}
    if not await session.scalar(text("SELECT to_regclass('stripe_customers') IS NOT NULL")):
        return {}
    rows = await session.execute(
        text(
            "SELECT contact_id, stripe_id FROM stripe_customers"
            " WHERE contact_id = ANY(CAST(:ids AS bigint[])) AND NOT deleted"
            " ORDER BY contact_id, stripe_id"
        ),
        {"ids": list(contact_ids)},
    )
    found: dict[int, list[str]] = {}
    for contact_id, stripe_id in rows.all():
        found.setdefault(int(contact_id), []).append(str(stripe_id))
    return found


async def deleted_segments_with_lists(session: AsyncSession, account_id: str) -> list[Segment]:
    stmt = select(Segment).where(
        Segment.account_id == account_id,
        Segment.deleted_at.is_not(None),
        Segment.platform_list_id.is_not(None),
    )
    return list((await session.scalars(stmt)).all())
