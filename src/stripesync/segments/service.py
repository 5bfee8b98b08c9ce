"""Segments: built-ins, custom rules, thresholds, members and previews.

Membership (contact_segments) is what the sync engine reads as each contact's desired
lists. Only contacts with permission (consent_state in PERMITTED_CONSENT) are members of
anything; `all` is every contact with permission (see membership.py).

Deleting a custom segment takes every member out of it at once (their versions are bumped,
so the sync engine sees the change) and hides it from the API. When the segment already
has a platform list, its row stays as a tombstone (`deleted_at`) until the sync engine has
deleted that list on the platform and called `forget_segment`; the contacts themselves stay
on the platform and on their other lists.

Automation triggers (`segment.entered` / `segment.exited`) come from activity and time
(the contacts-changed hook and the scheduled recompute), not from the merchant creating,
editing or re-thresholding a segment.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.kit.clock import utcnow
from stripesync.kit.errors import ApiError
from stripesync.kit.pagination import decode_cursor, encode_cursor
from stripesync.kit.tenancy import get_account
from stripesync.models import Segment, SegmentKind
from stripesync.segments import automation, membership, repository
from stripesync.segments.builtins import BUILTIN_KEYS, Thresholds
from stripesync.segments.membership import RecomputeResult
from stripesync.segments.rules import Rule, RuleError, parse_rule, rule_to_json
from stripesync.segments.schemas import (
    Member,
    MemberPage,
    PreviewOut,
    SegmentOut,
    SegmentSummary,
)
from stripesync.sync.queue import request_sync

MAX_CUSTOM_SEGMENTS = 50
PREVIEW_SAMPLE = 10


def _validated(rule: Any) -> Rule:
    try:
        return parse_rule(rule, root="rule")
    except RuleError as exc:
        names = ", ".join(f["field"] for f in exc.fields)
        raise ApiError(
            422, "validation_error", f"Invalid {names}", {"fields": exc.fields}
        ) from None


def segment_out(segment: Segment) -> SegmentOut:
    return SegmentOut(
        id=str(segment.id),
        key=segment.key,
        name=segment.name,
        kind=SegmentKind(segment.kind).value,
        rule=segment.rule,
        member_count=segment.member_count,
        platform_list_id=segment.platform_list_id,
        updated_at=segment.updated_at,
    )


async def ensure_builtin_segments(session: AsyncSession, account_id: str) -> list[int]:
    """Create the account's missing built-in segments and compute their members, in the
    caller's transaction; idempotent (the ids created, usually none). Call it on connect;
    every segment read and recompute calls it too."""
    created, _ = await _ensure_builtins(session, account_id)
    return created


async def _ensure_builtins(
    session: AsyncSession, account_id: str
) -> tuple[list[int], RecomputeResult]:
    if set(BUILTIN_KEYS) <= await repository.builtin_keys(session, account_id):
        return [], RecomputeResult()
    values = await repository.thresholds(session, account_id)
    created = await repository.insert_builtins(session, account_id, values)
    if not created:
        return [], RecomputeResult()
    # A first fill is not people entering segments: no automation triggers for it.
    result = await membership.recompute_segments(
        session, account_id, now=utcnow(), automation=False, segment_ids=created
    )
    return created, result


async def recompute_account(session: AsyncSession, account_id: str) -> RecomputeResult:
    """The scheduled full recompute of one account: every segment, every contact. Run it in
    a transaction of its own; changes nothing (and bumps nothing) when nothing moved."""
    _, filled = await _ensure_builtins(session, account_id)
    result = await membership.recompute_segments(
        session, account_id, now=utcnow(), automation=automation.enabled()
    )
    return RecomputeResult(
        contacts_changed=filled.contacts_changed + result.contacts_changed,
        entered=filled.entered + result.entered,
        exited=filled.exited + result.exited,
    )


async def list_segments(session: AsyncSession, account_id: str) -> list[SegmentOut]:
    await get_account(session, account_id)
    await ensure_builtin_segments(session, account_id)
    return [segment_out(s) for s in await repository.list_segments(session, account_id)]


async def segments_summary(session: AsyncSession, account_id: str) -> list[SegmentSummary]:
    """The `segments` block of GET /v1/accounts/{id}: exact member counts, built-ins first."""
    await ensure_builtin_segments(session, account_id)
    return [
        SegmentSummary(id=str(s.id), key=s.key, name=s.name, member_count=s.member_count)
        for s in await repository.list_segments(session, account_id)
    ]


async def _refreshed(session: AsyncSession, segment: Segment) -> SegmentOut:
    await session.flush()
    await session.refresh(segment)
    return segment_out(segment)


async def create_custom(
    session: AsyncSession, account_id: str, name: str, rule: dict[str, Any]
) -> SegmentOut:
    await get_account(session, account_id)
    parsed = _validated(rule)
    await ensure_builtin_segments(session, account_id)
    await repository.lock_account_segments(session, account_id)
    if await repository.count_custom(session, account_id) >= MAX_CUSTOM_SEGMENTS:
        raise ApiError(
            409,
            "segment_limit_reached",
            f"An account has at most {MAX_CUSTOM_SEGMENTS} custom segments; delete one first.",
        )
    if await repository.name_taken(session, account_id, name):
        raise ApiError(409, "segment_name_taken", f"A segment named {name!r} exists already.")
    segment = Segment(
        account_id=account_id, name=name, kind=SegmentKind.CUSTOM.value, rule=rule_to_json(parsed)
    )
    session.add(segment)
    await session.flush()
    await membership.recompute_segments(
        session, account_id, now=utcnow(), automation=False, segment_ids=[segment.id]
    )
    request_sync(session, account_id)  # the sync run creates its platform list
    return await _refreshed(session, segment)


async def _custom_for_change(session: AsyncSession, account_id: str, segment_id: int) -> Segment:
    await get_account(session, account_id)
    segment = await repository.get_segment(session, account_id, segment_id, for_update=True)
    if segment is None:
        raise ApiError(404, "segment_not_found", f"No segment {segment_id}.")
    if segment.kind == SegmentKind.BUILTIN:
        raise ApiError(
            409,
            "builtin_segment",
            "Built-in segments cannot be changed or deleted; adjust their thresholds with "
            "segment-settings instead.",
        )
    return segment


async def update_custom(
    session: AsyncSession, account_id: str, segment_id: int, name: str, rule: dict[str, Any]
) -> SegmentOut:
    parsed = _validated(rule)
    segment = await _custom_for_change(session, account_id, segment_id)
    if await repository.name_taken(session, account_id, name, except_id=segment.id):
        raise ApiError(409, "segment_name_taken", f"A segment named {name!r} exists already.")
    new_rule = rule_to_json(parsed)
    rule_changed = new_rule != segment.rule
    segment.name = name
    segment.rule = new_rule
    await session.flush()
    if rule_changed:
        await membership.recompute_segments(
            session, account_id, now=utcnow(), automation=False, segment_ids=[segment.id]
        )
    return await _refreshed(session, segment)


async def delete_custom(session: AsyncSession, account_id: str, segment_id: int) -> None:
    segment = await _custom_for_change(session, account_id, segment_id)
    now = utcnow()
    await repository.remove_memberships(session, segment.id, now)
    if segment.platform_list_id is None:
        await session.delete(segment)
    else:
        segment.deleted_at = now
        segment.member_count = 0
        request_sync(session, account_id)  # the sync run deletes its platform list
    await session.flush()


async def members_page(
    session: AsyncSession, account_id: str, segment_id: int, *, limit: int, cursor: str | None
) -> MemberPage:
    await get_account(session, account_id)
    segment = await repository.get_segment(session, account_id, segment_id)
    if segment is None:
        raise ApiError(404, "segment_not_found", f"No segment {segment_id}.")
    after: int | None = None
    if cursor is not None:
        (raw,) = decode_cursor(cursor, 1)
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise ApiError(422, "invalid_cursor", "The cursor is not one this API gave out.")
        after = raw
    rows = await repository.members(session, segment.id, after=after, limit=limit + 1)
    page = rows[:limit]
    ids = await repository.stripe_customer_ids(session, [r.id for r in page])
    return MemberPage(
        members=[_member(r, ids) for r in page],
        next_cursor=encode_cursor(page[-1].id) if len(rows) > limit else None,
    )


def _member(row: repository.MemberRow, ids: dict[int, list[str]]) -> Member:
    return Member(
        email=row.email,
        name=row.name,
        stripe_customer_ids=ids.get(row.id, []),
        purchase_count=row.purchase_count,
        last_purchase_at=row.last_purchase_at,
    )


async def preview(session: AsyncSession, account_id: str, rule: dict[str, Any]) -> PreviewOut:
    await get_account(session, account_id)
    parsed = _validated(rule)
    count, sample = await repository.preview(
        session, account_id, parsed, now=utcnow(), sample=PREVIEW_SAMPLE
    )
    ids = await repository.stripe_customer_ids(session, [r.id for r in sample])
    return PreviewOut(member_count=count, sample=[_member(r, ids) for r in sample])


async def get_thresholds(session: AsyncSession, account_id: str) -> Thresholds:
    await get_account(session, account_id)
    return await repository.thresholds(session, account_id)


async def put_thresholds(session: AsyncSession, account_id: str, values: Thresholds) -> Thresholds:
    """Save the thresholds and recompute the built-ins whose rule they change."""
    await get_account(session, account_id)
    await repository.save_thresholds(session, account_id, values)
    await ensure_builtin_segments(session, account_id)
    changed = await repository.set_builtin_rules(session, account_id, values)
    if changed:
        await membership.recompute_segments(
            session, account_id, now=utcnow(), automation=False, segment_ids=changed
        )
    return values


# --- for the sync engine -----------------------------------------------------------------


async def segments_awaiting_list_removal(session: AsyncSession, account_id: str) -> list[Segment]:
    """Deleted custom segments whose platform list still exists (delete it, then
    `forget_segment`)."""
    return await repository.deleted_segments_with_lists(session, account_id)


async def forget_segment(session: AsyncSession, segment_id: int) -> None:
    """Drop a deleted segment's tombstone once its platform list is gone."""
    await session.execute(
        delete(Segment).where(Segment.id == segment_id, Segment.deleted_at.is_not(None))
    )
