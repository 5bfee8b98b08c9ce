"""Worker jobs: the scheduled full recompute (time moves people between segments) and the
delivery of automation triggers."""

from __future__ import annotations

import time
from typing import Any

import structlog
from sqlalchemy import select

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.slices import continue_later, slice_deadline
from stripesync.models import Account
from stripesync.segments import automation
from stripesync.segments.service import recompute_account

log = structlog.get_logger(__name__)

RECOMPUTE_SEGMENTS = "recompute_segments"
DELIVER_AUTOMATION = "deliver_automation"


async def recompute_accounts(
    factory: SessionFactory,
    account_id: str | None = None,
    *,
    after: str | None = None,
    stop_at: float | None = None,
) -> dict[str, Any]:
    """Recompute one account, or every account in id order (those after `after`), each in
    a transaction of its own. Past `stop_at` (a `time.monotonic()` value) it stops between
    two accounts, at least one done, and `continue_after` names the last one done."""
    if account_id is None:
        stmt = select(Account.id).order_by(Account.id)
        if after is not None:
            stmt = stmt.where(Account.id > after)
        async with factory() as session:
            account_ids = list((await session.scalars(stmt)).all())
    else:
        account_ids = [account_id]
    totals: dict[str, Any] = {"accounts": 0, "contacts_changed": 0, "entered": 0, "exited": 0}
    for n, one in enumerate(account_ids):
        if n and stop_at is not None and time.monotonic() >= stop_at:
            totals["continue_after"] = account_ids[n - 1]
            break
        async with transaction(factory) as session:
            if await session.get(Account, one) is None:
                continue
            result = await recompute_account(session, one)
        totals["accounts"] += 1
        totals["contacts_changed"] += result.contacts_changed
        totals["entered"] += result.entered
        totals["exited"] += result.exited
        if result.contacts_changed:
            log.info(
                "segments_recomputed",
                account_id=one,
                contacts_changed=result.contacts_changed,
                entered=result.entered,
                exited=result.exited,
            )
    return totals


async def recompute_segments(
    ctx: dict[str, Any], account_id: str | None = None, after: str | None = None
) -> dict[str, Any]:
    """Job (and hourly cron, with no account): full set-based recompute, then deliver the
    triggers it stored. A run over every account is a slice: the accounts left when its
    time is up go on in a follow-up job (if that one is lost, the next hourly run)."""
    totals = await recompute_accounts(
        ctx["session_factory"], account_id, after=after, stop_at=slice_deadline(ctx["settings"])
    )
    if "continue_after" in totals:
        last = totals["continue_after"]
        continue_later(
            ctx, RECOMPUTE_SEGMENTS, None, last, job_id=f"{RECOMPUTE_SEGMENTS}:after:{last}"
        )
    if totals["entered"] or totals["exited"]:
        await deliver_automation(ctx)
    return totals


async def recompute_segments_cron(ctx: dict[str, Any]) -> dict[str, Any]:
    return await recompute_segments(ctx)


async def deliver_automation(ctx: dict[str, Any]) -> int:
    """Job and cron (every few seconds): post due triggers; the sweeper of the outbox."""
    settings: Settings = ctx["settings"]
    return await automation.deliver_due(ctx["session_factory"], ctx["http"], settings)
