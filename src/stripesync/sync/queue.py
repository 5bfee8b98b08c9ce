"""Asking for an account's sync: one coalesced job per account.

The job id is `sync:<account id>` and it is enqueued a couple of seconds ahead
(`SYNC_DEFER_SECONDS`): while one is queued, arq refuses a second job with the same id, so
ten quick changes to an account (or to one contact) cost one run and one platform call.
A change made while the job is already running is picked up by the job itself (it loops
while contacts lag) or by the sweeper (`sync.tasks.sweep_sync`), so nothing is lost.

Kept free of the engine's imports so that segments and accounts can ask for a sync
without import cycles.
"""

from __future__ import annotations

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.db import after_commit

log = structlog.get_logger(__name__)

SYNC_ACCOUNT = "sync_account"
SYNC_DEFER_SECONDS = 2.0

_queue: ArqRedis | None = None


def sync_job_id(account_id: str) -> str:
    return f"sync:{account_id}"


def use_queue(redis: ArqRedis | None) -> None:
    """Let `request_sync` enqueue through `redis` (set by the worker and the API at start)."""
    global _queue
    _queue = redis


async def enqueue_sync(
    redis: ArqRedis, account_id: str, *, defer_seconds: float = SYNC_DEFER_SECONDS
) -> bool:
    """Queue the account's sync job unless one is queued already; True when this call did."""
    job = await redis.enqueue_job(
        SYNC_ACCOUNT, account_id, _job_id=sync_job_id(account_id), _defer_by=defer_seconds
    )
    return job is not None


def request_sync(session: AsyncSession, account_id: str) -> None:
    """Enqueue the account's sync once this session's transaction commits.

    Without a configured queue (a CLI command, a test) nothing is enqueued here; the
    sweeper finds the lagging contacts within a minute.
    """
    queue = _queue
    if queue is None:
        return
    pending: set[str] = session.info.setdefault("sync_requested", set())
    if account_id in pending:
        return  # one enqueue per account per transaction
    pending.add(account_id)

    async def enqueue() -> None:
        await enqueue_sync(queue, account_id)

    after_commit(session, enqueue)
