"""Wires the sync engine into the others at import (listed in dispatch.HANDLER_MODULES):
contacts that change ask for their account's sync after the commit, and a new Stripe
connection asks for one too, whose first step creates the built-in segments' lists."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts.oauth import on_stripe_connected
from stripesync.activity.hooks import on_contacts_changed
from stripesync.models import StripeConnection
from stripesync.segments.service import ensure_builtin_segments
from stripesync.sync.queue import request_sync


@on_contacts_changed
async def sync_changed_contacts(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> None:
    """The contacts' new versions lag their synced ones: ask for the account's sync once
    this transaction commits (coalesced: one queued job per account)."""
    request_sync(session, account_id)


@on_stripe_connected
async def create_platform_lists_on_connect(
    session: AsyncSession, connection: StripeConnection
) -> None:
    """Built-in segments exist from the connect on, and the sync run this asks for creates
    their platform lists (outside calls belong in jobs, after the commit)."""
    await ensure_builtin_segments(session, connection.account_id)
    request_sync(session, connection.account_id)
