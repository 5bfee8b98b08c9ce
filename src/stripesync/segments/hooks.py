"""Keeps segments current as contacts change: registered on the contacts-changed seam and
run in the transaction of whatever changed them (an event, an import batch, an opt-in)."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.hooks import on_contacts_changed
from stripesync.kit.clock import utcnow
from stripesync.segments import automation, membership
from stripesync.segments.service import ensure_builtin_segments


@on_contacts_changed
async def recompute_segments_of_changed_contacts(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> None:
    """Recompute these contacts' memberships and store the automation triggers they cause."""
    now = utcnow()
    await ensure_builtin_segments(session, account_id)
    await membership.recompute_contacts(
        session, account_id, contact_ids, now=now, automation=automation.enabled()
    )
    await automation.record_activity_triggers(session, account_id, contact_ids, now=now)
