"""Import jobs: starting one (after connecting, on resync), showing them, cancelling them,
and the sweeper that re-derives lost work from Postgres.

A connection has at most one active import job (queued or running): a resync while one is
active answers that job. The arq job that runs imports is keyed by connection
(`accounts.oauth.import_job_id`), so disconnect can cancel it; the runner itself finds the
job to run in Postgres, by account.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import structlog
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts import repository as accounts_repository
from stripesync.accounts.oauth import IMPORT_HISTORY, import_job_id
from stripesync.accounts.schemas import ImportBlock
from stripesync.activity.context import ActivityContext
from stripesync.config import Settings
from stripesync.db import SessionFactory, after_commit, transaction
from stripesync.imports import notify, repository
from stripesync.imports.applying import (
    FINISH_BATCH,
    finish_touched,
    relink_payments_off_customer,
)
from stripesync.imports.schemas import JobList, JobOut, JobProgress
from stripesync.kit.clock import utcnow
from stripesync.kit.errors import ApiError
from stripesync.kit.pagination import decode_cursor, encode_cursor
from stripesync.kit.tenancy import get_account
from stripesync.models import ConnectionStatus, Job, JobKind, StripeConnection

log = structlog.get_logger(__name__)


# --- starting ---------------------------------------------------------------------------------


async def ensure_import_job(
    session: AsyncSession, connection: StripeConnection, kind: JobKind = JobKind.IMPORT
) -> Job:
    """The connection's active import job, creating one (queued) when there is none."""
    job = await repository.insert_import_job(session, connection.account_id, connection.id, kind)
    if job is None:
        job = await repository.active_import(session, connection.id)
    if job is None:  # finished between our insert and look-up: start a fresh one
        job = await repository.insert_import_job(
            session, connection.account_id, connection.id, kind
        )
    assert job is not None
    return job


async def enqueue_run(redis: ArqRedis | None, account_id: str, connection_id: int) -> None:
    """Ask a worker to run the account's active import (a no-op while one is queued)."""
    if redis is None:
        return
    try:
        await redis.enqueue_job(
            IMPORT_HISTORY, account_id, _job_id=import_job_id(account_id, connection_id)
        )
    except Exception as exc:  # Redis down: the sweeper enqueues it later
        log.warning("import_enqueue_failed", account_id=account_id, error=type(exc).__name__)


async def resync(session: AsyncSession, redis: ArqRedis | None, account_id: str) -> Job:
    """POST /stripe/resync: a new import job (or the active one), run after commit.

    Idempotent by construction: the apply functions never double a payment, the opt-in
    email goes once per person ever, and contacts are unique per email."""
    await get_account(session, account_id)
    connection = await accounts_repository.active_connection(session, account_id)
    if connection is None:
        raise ApiError(
            409, "stripe_not_connected", "Connect a Stripe account before syncing it again."
        )
    job = await ensure_import_job(session, connection, JobKind.RESYNC)
    connection_id = connection.id
    after_commit(session, lambda: enqueue_run(redis, account_id, connection_id))
    return job


async def cancel_connection_imports(session: AsyncSession, connection_id: int) -> list[str]:
    """Disconnect: the connection's active imports end as `cancelled` (no email). A runner
    in the middle of one sees it before its next page and stops."""
    ids = await repository.cancel_active_imports(session, connection_id)
    if ids:
        log.info("imports_cancelled", connection_id=connection_id, jobs=ids)
    return ids


# --- showing ----------------------------------------------------------------------------------


def job_out(job: Job) -> JobOut:
    progress = job.progress or {}
    return JobOut(
        id=job.id,
        account_id=job.account_id,
        kind=job.kind,
        state=job.state,
        progress=JobProgress(
            phase=progress.get("phase"),
            done=int(progress.get("done", 0)),
            total=int(progress.get("total", 0)),
        ),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        report=job.report or {},
    )


async def get_job(session: AsyncSession, job_id: str) -> JobOut:
    job = await session.get(Job, job_id)
    if job is None:
        raise ApiError(404, "job_not_found", f"No job {job_id}.")
    return job_out(job)


async def list_jobs(
    session: AsyncSession,
    *,
    account_id: str | None,
    state: str | None,
    limit: int,
    cursor: str | None,
) -> JobList:
    after = None
    if cursor is not None:
        created, job_id = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(str(created)), str(job_id))
        except ValueError:
            raise ApiError(
                422, "invalid_cursor", "The cursor is not one this API gave out."
            ) from None
    rows = await repository.list_jobs(
        session, account_id=account_id, state=state, limit=limit + 1, after=after
    )
    page = list(rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(last.created_at.isoformat(), last.id)
    return JobList(jobs=[job_out(j) for j in page], next_cursor=next_cursor)


async def import_block(session: AsyncSession, account_id: str) -> ImportBlock | None:
    """The dashboard's `import` block: the account's latest import job."""
    job = await repository.latest_import(session, account_id)
    if job is None:
        return None
    return ImportBlock(job_id=job.id, state=job.state, progress=job_out(job).progress.model_dump())


# --- the sweeper ------------------------------------------------------------------------------


async def sweep(
    session_factory: SessionFactory, redis: ArqRedis | None, settings: Settings
) -> dict[str, int]:
    """Re-derive import work from Postgres: cancel imports of revoked connections, start
    imports that were never created, re-enqueue orphans (a lost enqueue, a killed worker's
    expired lease), and send completion emails still due."""
    now = utcnow()
    grace = timedelta(seconds=settings.sweeper_grace_seconds)
    enqueue: list[tuple[str, str]] = []
    async with transaction(session_factory) as session:
        cancelled = 0
        for connection_id in await repository.active_imports_of_dead_connections(session):
            cancelled += len(await cancel_connection_imports(session, connection_id))
        created = 0
        for connection in await repository.connections_without_import(session):
            if connection.connected_at < now - grace:
                await ensure_import_job(session, connection)
                created += 1
        for job in await repository.orphaned_imports(session, now - grace):
            enqueue.append((job.account_id, f"{IMPORT_HISTORY}:sweep:{job.id}:{job.attempts}"))
        notices = list(await repository.pending_notices(session))
    for account_id, arq_id in enqueue:
        if redis is not None:
            try:
                await redis.enqueue_job(IMPORT_HISTORY, account_id, _job_id=arq_id)
            except Exception as exc:
                log.warning(
                    "import_enqueue_failed", account_id=account_id, error=type(exc).__name__
                )
    sent = 0
    for job_id in notices:
        if await notify.send_completion(session_factory, settings, job_id) == "sent":
            sent += 1
    finished = await finish_ended_imports(session_factory)
    if cancelled or created or enqueue or sent or finished:
        log.info(
            "imports_swept",
            cancelled=cancelled,
            created=created,
            resumed=len(enqueue),
            sent=sent,
            contacts_finished=finished,
        )
    return {
        "cancelled": cancelled,
        "created": created,
        "resumed": len(enqueue),
        "sent": sent,
        "contacts_finished": finished,
    }


async def finish_ended_imports(session_factory: SessionFactory) -> int:
    """Finish the contacts that an import which failed or was cancelled had touched but
    not finished (their activity, segments, opt-in and sync would wait for the next event
    otherwise), `FINISH_BATCH` per transaction; answers how many."""
    async with transaction(session_factory) as session:
        owing = await repository.ended_jobs_with_debt(session)
    finished = 0
    for job_id, connection in owing:
        # The payments its appliers stored beside their customer first (the runner makes
        # the same pass beside its finish), so that their contacts are owed a finish too.
        after = 0
        while True:
            async with transaction(session_factory) as session:
                ctx = ActivityContext.for_connection(connection, utcnow())
                last = await relink_payments_off_customer(
                    session, ctx, job_id, after=after, limit=FINISH_BATCH
                )
            if last is None:
                break
            after = last
        after = 0
        while True:
            async with transaction(session_factory) as session:
                ctx = ActivityContext.for_connection(connection, utcnow())
                done = await finish_touched(session, ctx, job_id, FINISH_BATCH, after)
            if not done:
                break
            finished += len(done)
            after = done[-1]
    return finished


async def runnable_job_ids(session: AsyncSession, account_id: str) -> list[str]:
    """The account's active import jobs, oldest first (there is at most one per connection)."""
    connection = await accounts_repository.active_connection(session, account_id)
    if connection is None:
        return []
    job = await repository.active_import(session, connection.id)
    if job is None:
        return []
    if connection.status != ConnectionStatus.CONNECTED:
        return []
    return [job.id]
