"""Worker jobs of the sync engine: the coalesced per-account sync and its sweeper.

- `sync_account_job(account_id)`: runs under the job id `sync:<account id>` (see
  `sync.queue`), so at most one is queued or running per account in arq, and additionally
  under a Postgres advisory lock per account, so two workers never push the same account's
  contacts at once even if arq ran a job twice (a worker that died and was retried, a
  manual enqueue). It loops while contacts still lag (a change made during a run is
  pushed by the same job), a few passes at most, within one slice (`kit.slices`): a pass
  still running when the slice's time is up is cut off and the job asks for a follow-up.
- `sweep_sync` (cron, every minute): enqueues the sync of every account with lagging
  contacts whose deferral (quota) has passed: a lost enqueue, a crash mid-run, a change
  made while the job was finishing, tomorrow's share of a quota-deferred sync.
A run that dies mid-way is safe to repeat: contacts are marked synced per batch at the
version pushed, and bulk activities already started are resumed (polled), not re-sent.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from arq.worker import Retry
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.accounts.tokens import TokenUnavailable, cc_access_token
from stripesync.clients.cc_auth import CcAuthUnavailable
from stripesync.clients.constant_contact import (
    ConstantContactClient,
    PlatformError,
    constant_contact_limiter,
)
from stripesync.config import Settings
from stripesync.db import transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.slices import continue_later, slice_deadline
from stripesync.sync import repository
from stripesync.sync.queue import SYNC_ACCOUNT, enqueue_sync, sync_job_id
from stripesync.sync.service import SyncReport, sync_account

log = structlog.get_logger(__name__)

# Namespace of the advisory locks (first key of the two-int form), so ours never collide
# with another feature's locks on the same account.
_LOCK_NAMESPACE = 0x5C_5C
MAX_PASSES = 5
BUSY_RETRY_SECONDS = 5
RETRY_BASE_SECONDS = 15


def platform_client(ctx: dict[str, Any], account_id: str) -> ConstantContactClient:
    """The account's client: its token refreshed single-flight by the accounts feature,
    its calls within the API key's shared budget."""
    settings: Settings = ctx["settings"]

    async def token(force_refresh: bool) -> str:
        return await cc_access_token(
            ctx["session_factory"], ctx["http"], settings, account_id, force_refresh=force_refresh
        )

    return ConstantContactClient.from_settings(
        ctx["http"],
        settings,
        token=token,
        limiter=constant_contact_limiter(ctx["redis"], settings),
    )


def _lock_key(account_id: str) -> int:
    # A stable 32-bit key per account (crc32 is the same in every process, unlike hash()).
    return zlib.crc32(account_id.encode()) - 2**31


@asynccontextmanager
async def account_lock(engine: AsyncEngine, account_id: str) -> AsyncIterator[bool]:
    """Hold the account's sync lock for the block; yields False when another holds it.

    A session-level advisory lock on a connection of its own: it spans the many short
    transactions of a run and goes with the connection if the process dies.
    """
    async with engine.connect() as conn:
        got = bool(
            await conn.scalar(
                text("SELECT pg_try_advisory_lock(:ns, :key)"),
                {"ns": _LOCK_NAMESPACE, "key": _lock_key(account_id)},
            )
        )
        await conn.commit()
        try:
            yield got
        finally:
            if got:
                await conn.execute(
                    text("SELECT pg_advisory_unlock(:ns, :key)"),
                    {"ns": _LOCK_NAMESPACE, "key": _lock_key(account_id)},
                )
                await conn.commit()


async def sync_account_job(
    ctx: dict[str, Any], account_id: str, *, poll_interval: float = 0.25
) -> dict[str, Any]:
    """Job: push the account's lagging contacts (and lists, custom fields) to the platform."""
    engine: AsyncEngine = ctx["engine"]
    stop_at = slice_deadline(ctx["settings"])
    totals = SyncReport()
    state = "done"
    async with account_lock(engine, account_id) as got:
        if not got:
            # Another worker is syncing this account; look again shortly (what it missed,
            # this retry or the sweeper pushes).
            raise Retry(defer=BUSY_RETRY_SECONDS)
        client = platform_client(ctx, account_id)
        for _ in range(MAX_PASSES):
            slice_time = asyncio.timeout(stop_at - time.monotonic())
            try:
                async with slice_time:
                    report = await sync_account(
                        ctx["session_factory"], client, account_id, poll_interval=poll_interval
                    )
            except TimeoutError:
                if not slice_time.expired():
                    raise
                # Cut off like a crash, which a run survives: pushes are recorded per
                # contact and per batch, and the next run polls started imports, never
                # sends them again. The follow-up job (or the sweeper) goes on.
                log.info("sync_slice_ended", account_id=account_id)
                continue_later(ctx, SYNC_ACCOUNT, account_id, job_id=sync_job_id(account_id))
                state = "continued"
                break
            except (PlatformError, CcAuthUnavailable) as exc:
                if isinstance(exc, PlatformError) and not exc.retryable:
                    raise
                # The platform or its token endpoint is down after the client's own retries:
                # try the job again later, backing off (and the sweeper would anyway).
                delay = min(RETRY_BASE_SECONDS * 2 ** (ctx.get("job_try", 1) - 1), 600)
                log.warning("sync_platform_unavailable", account_id=account_id, retry_in=delay)
                raise Retry(defer=delay) from exc
            except TokenUnavailable as exc:
                # Not connected to the platform, or the merchant must re-authorize: the
                # reason is on the account; the sweeper skips it until new credentials.
                log.warning("sync_no_platform_token", account_id=account_id, reason=str(exc))
                return {"account_id": account_id, "state": "no_platform_token"}
            _add(totals, report)
            if report.deferred_until is not None or not await _still_lagging(ctx, account_id):
                break
    return {
        "account_id": account_id,
        "state": "deferred" if totals.deferred_until else state,
        "signed_up": totals.signed_up,
        "imported": totals.imported,
        "removed": totals.removed,
        "skipped": totals.skipped,
        "errors": totals.errors,
        "deferred_until": totals.deferred_until.isoformat() if totals.deferred_until else None,
    }


async def _still_lagging(ctx: dict[str, Any], account_id: str) -> bool:
    async with transaction(ctx["session_factory"]) as session:
        return bool(await repository.lagging_contacts(session, account_id, utcnow(), 1))


def _add(totals: SyncReport, report: SyncReport) -> None:
    totals.signed_up += report.signed_up
    totals.imported += report.imported
    totals.removed += report.removed
    totals.skipped += report.skipped
    totals.errors += report.errors
    totals.deferred += report.deferred
    totals.deferred_until = report.deferred_until or totals.deferred_until


async def sweep_sync(ctx: dict[str, Any]) -> int:
    """Cron: enqueue the sync of every account with lagging contacts; answer how many
    were newly queued (an account whose job is queued or running is left alone)."""
    async with transaction(ctx["session_factory"]) as session:
        accounts = await repository.accounts_to_sync(session, utcnow())
    queued = 0
    for account_id in accounts:
        queued += await enqueue_sync(ctx["redis"], account_id, defer_seconds=0)
    if queued:
        log.info("sync_swept", queued=queued)
    return queued
