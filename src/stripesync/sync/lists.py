"""One platform list per segment, and our custom fields, on the account's platform.

Run at the start of every sync run (so it heals whatever a connect or a segment change
left undone) and therefore right after connect too (the connect hook asks for a sync):
- every live segment without `platform_list_id` gets its list, created by the segment's
  name; a 409 (the name is taken, e.g. by an earlier run that died before storing the id,
  or by the merchant) looks the list up and reuses it. Its members are then marked
  lagging, so the same run puts them on the new list;
- a deleted custom segment (a tombstone, see segments/service.py) has its platform list
  deleted (the contacts stay on the platform and on their other lists), its id dropped from
  every contact's synced lists, and then the tombstone is forgotten;
- our three custom fields are created once per account and remembered.
"""

from __future__ import annotations

import structlog
from sqlalchemy import func, select, update

from stripesync.clients.constant_contact import (
    ConstantContactClient,
    CustomFieldType,
    PlatformError,
)
from stripesync.db import SessionFactory, transaction
from stripesync.models import Contact, ContactSegment, PlatformCustomField, Segment
from stripesync.models.sync import CustomFieldKey
from stripesync.segments.service import forget_segment, segments_awaiting_list_removal
from stripesync.sync import repository

log = structlog.get_logger(__name__)

CUSTOM_FIELDS: dict[CustomFieldKey, tuple[str, CustomFieldType]] = {
    CustomFieldKey.LIFETIME_SPEND: ("Lifetime spend", "currency"),
    CustomFieldKey.PURCHASE_COUNT: ("Purchase count", "number"),
    CustomFieldKey.LAST_PURCHASE_DATE: ("Last purchase date", "date"),
}

LIST_DESCRIPTION = "Kept in step with Stripe payment activity by stripesync."


async def ensure_platform_lists(
    session_factory: SessionFactory, client: ConstantContactClient, account_id: str
) -> int:
    """Give every live segment of the account its platform list; answer how many were made
    (or found by name). Idempotent: segments with a list id cost no call."""
    async with transaction(session_factory) as session:
        missing = list(
            (
                await session.execute(
                    select(Segment.id, Segment.name)
                    .where(
                        Segment.account_id == account_id,
                        Segment.deleted_at.is_(None),
                        Segment.platform_list_id.is_(None),
                    )
                    .order_by(Segment.id)
                )
            ).all()
        )
    made = 0
    for segment_id, name in missing:
        try:
            found = await client.ensure_contact_list(name, LIST_DESCRIPTION)
        except PlatformError as exc:
            if exc.retryable:
                raise
            # Refused for good (e.g. the account's 1,000 lists): the other segments still
            # sync; this one is tried again at the next run.
            log.warning(
                "platform_list_refused",
                account_id=account_id,
                segment_id=segment_id,
                error_key=exc.error_key,
            )
            continue
        async with transaction(session_factory) as session:
            stored = await session.execute(
                update(Segment)
                .where(
                    Segment.id == segment_id,
                    Segment.account_id == account_id,
                    Segment.platform_list_id.is_(None),
                )
                .values(platform_list_id=found.list_id)
            )
            if stored.rowcount:  # type: ignore[attr-defined]
                # Members were marked synced without this list: push them again.
                await session.execute(
                    update(Contact)
                    .where(
                        Contact.id.in_(
                            select(ContactSegment.contact_id).where(
                                ContactSegment.segment_id == segment_id
                            )
                        ),
                        Contact.synced_version >= Contact.version,
                    )
                    .values(synced_version=Contact.version - 1)
                    .execution_options(synchronize_session=False)
                )
        made += 1
        log.info("platform_list_ready", account_id=account_id, segment_id=segment_id)
    return made


async def remove_deleted_segment_lists(
    session_factory: SessionFactory, client: ConstantContactClient, account_id: str
) -> int:
    """Delete the platform lists of deleted custom segments, then forget the segments."""
    async with transaction(session_factory) as session:
        tombstones = [
            (s.id, s.platform_list_id)
            for s in await segments_awaiting_list_removal(session, account_id)
        ]
    for segment_id, list_id in tombstones:
        assert list_id is not None
        activity = await client.delete_contact_list(list_id)
        if activity is not None and not activity.finished:
            await client.wait_for_activity(activity.activity_id)
        async with transaction(session_factory) as session:
            # The list is gone: no contact is on it, so nobody needs removing from it.
            await session.execute(
                update(Contact)
                .where(Contact.account_id == account_id, Contact.synced_lists.contains([list_id]))
                .values(synced_lists=func.array_remove(Contact.synced_lists, list_id))
                .execution_options(synchronize_session=False)
            )
            await forget_segment(session, segment_id)
        log.info("platform_list_deleted", account_id=account_id, segment_id=segment_id)
    return len(tombstones)


async def ensure_custom_fields(
    session_factory: SessionFactory, client: ConstantContactClient, account_id: str
) -> dict[str, PlatformCustomField]:
    """Our three custom fields on the account's platform, created once and remembered."""
    async with transaction(session_factory) as session:
        known = await repository.custom_fields(session, account_id)
    for key, (label, type_) in CUSTOM_FIELDS.items():
        if key.value in known:
            continue
        created = await client.ensure_custom_field(label, type_)
        async with transaction(session_factory) as session:
            row = PlatformCustomField(
                account_id=account_id,
                key=key.value,
                custom_field_id=created.custom_field_id,
                name=created.name or label,
                label=created.label,
                type=created.type,
            )
            await session.merge(row)
        known[key.value] = row
    return known
