"""All SQL of jobs and import checkpoints."""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, or_, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.kit.clock import utcnow
from stripesync.models import (
    ACTIVE_JOB_STATES,
    IMPORT_KINDS,
    ConnectionStatus,
    ImportTouched,
    ImportWindow,
    Job,
    JobState,
    NoticeState,
    OptinEmail,
    StripeConnection,
)


def new_job_id() -> str:
    return "job_" + secrets.token_hex(12)


async def active_import(
    session: AsyncSession, connection_id: int, *, lock: bool = False
) -> Job | None:
    stmt = select(Job).where(
        Job.connection_id == connection_id,
        Job.kind.in_(IMPORT_KINDS),
        Job.state.in_(ACTIVE_JOB_STATES),
    )
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_import_job(
    session: AsyncSession, account_id: str, connection_id: int, kind: str
) -> Job | None:
    """A new queued import job, or None when the connection already has an active one
    (the partial unique index decides, so two concurrent requests cannot both start one)."""
    job_id = new_job_id()
    inserted = await session.execute(
        insert(Job)
        .values(id=job_id, account_id=account_id, connection_id=connection_id, kind=kind)
        .on_conflict_do_nothing(
            index_elements=[Job.connection_id],
            index_where=text("state IN ('queued', 'running') AND kind IN ('import', 'resync')"),
        )
        .returning(Job.id)
    )
    if inserted.scalar_one_or_none() is None:
        return None
    return await session.get(Job, job_id)


async def latest_import(session: AsyncSession, account_id: str) -> Job | None:
    stmt = (
        select(Job)
        .where(Job.account_id == account_id, Job.kind.in_(IMPORT_KINDS))
        .order_by(Job.created_at.desc(), Job.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def claim(session: AsyncSession, job_id: str, token: str, lease: timedelta) -> Job | None:
    """Take the job's lease when it is active and nobody holds a live lease on it."""
    now = utcnow()
    row = await session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.state.in_(ACTIVE_JOB_STATES),
            or_(Job.lease_until.is_(None), Job.lease_until < now),
        )
        .values(
            state=JobState.RUNNING,
            lease_token=token,
            lease_until=now + lease,
            started_at=func.coalesce(Job.started_at, now),
            attempts=Job.attempts + 1,
            updated_at=now,
        )
        .returning(Job.id)
    )
    if row.scalar_one_or_none() is None:
        return None
    return await session.get(Job, job_id, populate_existing=True)


async def renew(
    session: AsyncSession,
    job_id: str,
    token: str,
    lease: timedelta,
    *,
    progress: dict[str, Any] | None = None,
    report: dict[str, Any] | None = None,
) -> bool:
    """Extend our lease (and record progress); False when the lease is no longer ours or
    the job is no longer running (cancelled, taken over)."""
    now = utcnow()
    values: dict[str, Any] = {"lease_until": now + lease, "updated_at": now}
    if progress is not None:
        values["progress"] = progress
    if report is not None:
        values["report"] = report
    row = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_token == token, Job.state == JobState.RUNNING)
        .values(**values)
        .returning(Job.id)
    )
    return row.scalar_one_or_none() is not None


async def release(
    session: AsyncSession,
    job_id: str,
    token: str,
    error: str | None,
    *,
    attempt_used: bool = True,
) -> None:
    """Give the lease back, so the sweeper (or a retry) can run the job again now; a turn
    that only paused (its time was up) gives its attempt back too."""
    values: dict[str, Any] = {
        "lease_token": None,
        "lease_until": None,
        "error": error,
        "updated_at": utcnow(),
    }
    if not attempt_used:
        values["attempts"] = Job.attempts - 1
    await session.execute(
        update(Job).where(Job.id == job_id, Job.lease_token == token).values(**values)
    )


async def finish(
    session: AsyncSession,
    job_id: str,
    token: str | None,
    state: JobState,
    *,
    error: str | None = None,
    report: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    notify: bool,
) -> bool:
    """End the job (only while active, and only by the lease holder when `token` is
    given); a job that ends due for an email gets `notice_state = pending`."""
    now = utcnow()
    values: dict[str, Any] = {
        "state": state,
        "finished_at": now,
        "updated_at": now,
        "lease_token": None,
        "lease_until": None,
        "error": error,
    }
    if report is not None:
        values["report"] = report
    if progress is not None:
        values["progress"] = progress
    if notify:
        values["notice_state"] = NoticeState.PENDING
    stmt = update(Job).where(Job.id == job_id, Job.state.in_(ACTIVE_JOB_STATES))
    if token is not None:
        stmt = stmt.where(Job.lease_token == token)
    row = await session.execute(stmt.values(**values).returning(Job.id))
    return row.scalar_one_or_none() is not None


async def cancel_active_imports(session: AsyncSession, connection_id: int) -> list[str]:
    rows = await session.execute(
        update(Job)
        .where(
            Job.connection_id == connection_id,
            Job.kind.in_(IMPORT_KINDS),
            Job.state.in_(ACTIVE_JOB_STATES),
        )
        .values(
            state=JobState.CANCELLED,
            finished_at=utcnow(),
            updated_at=utcnow(),
            lease_token=None,
            lease_until=None,
            error="cancelled: Stripe was disconnected",
        )
        .returning(Job.id)
    )
    return list(rows.scalars().all())


async def connection_status(session: AsyncSession, connection_id: int) -> str | None:
    return (
        await session.execute(
            select(StripeConnection.status).where(StripeConnection.id == connection_id)
        )
    ).scalar_one_or_none()


# --- windows -----------------------------------------------------------------------------------


async def windows(session: AsyncSession, job_id: str) -> Sequence[ImportWindow]:
    stmt = select(ImportWindow).where(ImportWindow.job_id == job_id).order_by(ImportWindow.id)
    return (await session.execute(stmt)).scalars().all()


async def insert_windows(
    session: AsyncSession, job_id: str, plan: list[tuple[str, int, int]]
) -> None:
    for resource, gte, lt in plan:
        session.add(ImportWindow(job_id=job_id, resource=resource, created_gte=gte, created_lt=lt))
    await session.flush()


async def split_window(session: AsyncSession, job_id: str, window_id: int, cut: int) -> int:
    """Cut window `window_id` at `cut`: it keeps `[cut, lt)`, a new window gets `[gte, cut)`."""
    old = (
        await session.execute(
            select(ImportWindow).where(ImportWindow.id == window_id).with_for_update()
        )
    ).scalar_one()
    new = ImportWindow(
        job_id=job_id, resource=old.resource, created_gte=old.created_gte, created_lt=cut
    )
    session.add(new)
    old.created_gte = cut
    await session.flush()
    return new.id


async def checkpoint(
    session: AsyncSession,
    window_id: int,
    *,
    cursor: str | None,
    oldest_created: int | None,
    objects: int,
    pages: int,
    done: bool,
    counts: dict[str, int],
) -> None:
    """Advance a window by `objects` in `pages` to its new position."""
    await session.execute(
        update(ImportWindow)
        .where(ImportWindow.id == window_id)
        .values(
            cursor=cursor,
            oldest_created=oldest_created,
            objects=ImportWindow.objects + objects,
            pages=ImportWindow.pages + pages,
            done=done,
            counts=counts,
        )
    )


# --- contacts touched, finished in bulk ---------------------------------------------------------


async def note_touched(
    session: AsyncSession, job_id: str, touched: Collection[int], changed: Collection[int]
) -> None:
    """Owe a finish to these contacts (`changed`: created or consent moved), in id order.

    Most were already owed one (a contact is touched by its customer and by each payment):
    those rows are left alone (DO NOTHING takes no row lock, where DO UPDATE locked each
    one, even with nothing to change), and only a debt newly `changed` is updated."""
    ids = sorted(set(touched) | set(changed))
    if not ids:
        return
    moved = set(changed)
    await session.execute(
        text(
            """
            INSERT INTO import_touched (job_id, contact_id, changed)
            SELECT :job_id, u.id, u.changed
            FROM unnest(CAST(:ids AS bigint[]), CAST(:changed AS boolean[])) AS u(id, changed)
            ON CONFLICT (job_id, contact_id) DO NOTHING
            """
        ),
        {"job_id": job_id, "ids": ids, "changed": [i in moved for i in ids]},
    )
    if moved:
        await session.execute(
            text(
                """
                UPDATE import_touched SET changed = true
                WHERE job_id = :job_id AND contact_id = ANY(CAST(:ids AS bigint[]))
                    AND NOT changed
                """
            ),
            {"job_id": job_id, "ids": sorted(moved)},
        )


async def take_touched(
    session: AsyncSession, job_id: str, limit: int, after: int = 0, upto: int | None = None
) -> tuple[set[int], set[int]]:
    """Up to `limit` contacts still owed a finish (lowest ids above `after` first, none
    above `upto`) that no other transaction is taking, removed from the debt in the
    caller's transaction: (touched, changed). A caller taking batch after batch passes the
    last id it took: the index entries of the debt already paid are dead rows until
    vacuumed, and starting from the first id each time would walk them all again
    (quadratic in the debt)."""
    upto_filter = "" if upto is None else " AND contact_id <= :upto"
    rows = (
        await session.execute(
            text(
                f"""
                DELETE FROM import_touched WHERE job_id = :job_id AND contact_id = ANY(ARRAY(
                    SELECT contact_id FROM import_touched
                    WHERE job_id = :job_id AND contact_id > :after{upto_filter}
                    ORDER BY contact_id LIMIT :limit FOR UPDATE SKIP LOCKED))
                RETURNING contact_id, changed
                """  # noqa: S608 - only a constant is interpolated
            ),
            {"job_id": job_id, "limit": limit, "after": after, "upto": upto},
        )
    ).all()
    return {int(r.contact_id) for r in rows}, {int(r.contact_id) for r in rows if r.changed}


async def touched_span(
    session: AsyncSession, job_id: str, after: int, limit: int
) -> tuple[int, int] | None:
    """(first, last) id of the next `limit` contacts owed a finish above `after`, read
    without locking them; None when none is left above it."""
    row = (
        await session.execute(
            text(
                """
                SELECT min(contact_id), max(contact_id) FROM (
                    SELECT contact_id FROM import_touched
                    WHERE job_id = :job_id AND contact_id > :after
                    ORDER BY contact_id LIMIT :limit) next
                """
            ),
            {"job_id": job_id, "after": after, "limit": limit},
        )
    ).one()
    return None if row[0] is None else (int(row[0]), int(row[1]))


async def touched_left(session: AsyncSession, job_id: str) -> int:
    count = await session.scalar(
        text("SELECT count(*) FROM import_touched WHERE job_id = :job_id"), {"job_id": job_id}
    )
    return int(count or 0)


async def ended_jobs_with_debt(
    session: AsyncSession,
) -> Sequence[tuple[str, StripeConnection]]:
    """(job id, connection) of ended imports (failed, cancelled) still owing contacts a
    finish."""
    owing = select(ImportTouched.job_id).where(ImportTouched.job_id == Job.id).exists()
    rows = await session.execute(
        select(Job.id, StripeConnection)
        .join(StripeConnection, StripeConnection.id == Job.connection_id)
        .where(Job.state.in_([JobState.FAILED, JobState.CANCELLED]), owing)
        .order_by(Job.id)
    )
    return [(job_id, connection) for job_id, connection in rows.all()]


# --- report helpers ---------------------------------------------------------------------------


async def contact_states(
    session: AsyncSession, account_id: str, emails: Sequence[str]
) -> dict[str, tuple[str, datetime]]:
    """email → (consent state, created_at) of the account's contacts with these emails."""
    if not emails:
        return {}
    rows = await session.execute(
        text(
            "SELECT email, consent_state, created_at FROM contacts "
            "WHERE account_id = :account_id AND email = ANY(CAST(:emails AS varchar[]))"
        ),
        {"account_id": account_id, "emails": list(emails)},
    )
    return {r.email: (r.consent_state, r.created_at) for r in rows}


async def contacts_created_since(session: AsyncSession, account_id: str, since: datetime) -> int:
    row = await session.execute(
        text("SELECT count(*) FROM contacts WHERE account_id = :a AND created_at >= :since"),
        {"a": account_id, "since": since},
    )
    return int(row.scalar_one())


async def optin_emails_since(session: AsyncSession, account_id: str, since: datetime) -> int:
    stmt = select(func.count()).where(
        OptinEmail.account_id == account_id, OptinEmail.created_at >= since
    )
    return int((await session.execute(stmt)).scalar_one())


async def recent_unknown_customers(
    session: AsyncSession,
    account_id: str,
    livemode: bool,
    since: datetime,
    exclude: Sequence[str],
    limit: int,
) -> list[str]:
    """Customers who paid since `since` but are not stored (created before the window)."""
    rows = await session.execute(
        text(
            """
            SELECT DISTINCT p.customer_id FROM payments p
            WHERE p.account_id = :a AND p.livemode = :live AND p.created >= :since
              AND p.customer_id IS NOT NULL
              AND p.customer_id <> ALL(CAST(:exclude AS varchar[]))
              AND NOT EXISTS (SELECT 1 FROM stripe_customers s WHERE s.account_id = p.account_id
                              AND s.livemode = p.livemode AND s.stripe_id = p.customer_id)
            ORDER BY p.customer_id LIMIT :limit
            """
        ),
        {
            "a": account_id,
            "live": livemode,
            "since": since,
            "exclude": list(exclude),
            "limit": limit,
        },
    )
    return [str(r[0]) for r in rows]


# --- listing and sweeping ---------------------------------------------------------------------


async def list_jobs(
    session: AsyncSession,
    *,
    account_id: str | None,
    state: str | None,
    limit: int,
    after: tuple[datetime, str] | None,
) -> Sequence[Job]:
    stmt = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if account_id is not None:
        stmt = stmt.where(Job.account_id == account_id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if after is not None:
        stmt = stmt.where(tuple_(Job.created_at, Job.id) < tuple_(*after))
    return (await session.execute(stmt)).scalars().all()


async def orphaned_imports(session: AsyncSession, queued_before: datetime) -> Sequence[Job]:
    """Active imports nobody holds a live lease on: queued for a while (a lost enqueue) or
    running under an expired lease (a killed worker)."""
    now = utcnow()
    stmt = select(Job).where(
        Job.kind.in_(IMPORT_KINDS),
        or_(
            (Job.state == JobState.QUEUED) & (Job.created_at < queued_before),
            (Job.state == JobState.RUNNING) & or_(Job.lease_until.is_(None), Job.lease_until < now),
        ),
    )
    return (await session.execute(stmt)).scalars().all()


async def active_imports_of_dead_connections(session: AsyncSession) -> Sequence[int]:
    stmt = (
        select(Job.connection_id)
        .join(StripeConnection, StripeConnection.id == Job.connection_id)
        .where(
            Job.kind.in_(IMPORT_KINDS),
            Job.state.in_(ACTIVE_JOB_STATES),
            StripeConnection.status != ConnectionStatus.CONNECTED,
        )
    )
    return [c for c in (await session.execute(stmt)).scalars().all() if c is not None]


async def connections_without_import(session: AsyncSession) -> Sequence[StripeConnection]:
    """Connected connections that never got an import job (a lost hook or row)."""
    stmt = select(StripeConnection).where(
        StripeConnection.status == ConnectionStatus.CONNECTED,
        ~select(Job.id)
        .where(Job.connection_id == StripeConnection.id, Job.kind.in_(IMPORT_KINDS))
        .exists(),
    )
    return (await session.execute(stmt)).scalars().all()


async def pending_notices(session: AsyncSession, limit: int = 50) -> Sequence[str]:
    stmt = select(Job.id).where(Job.notice_state == NoticeState.PENDING).limit(limit)
    return (await session.execute(stmt)).scalars().all()


async def claim_notice(session: AsyncSession, job_id: str) -> Job | None:
    row = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.notice_state == NoticeState.PENDING)
        .values(notice_state=NoticeState.SENDING, notice_attempts=Job.notice_attempts + 1)
        .returning(Job.id)
    )
    if row.scalar_one_or_none() is None:
        return None
    return await session.get(Job, job_id, populate_existing=True)


async def set_notice(session: AsyncSession, job_id: str, state: NoticeState) -> None:
    values: dict[str, Any] = {"notice_state": state}
    if state == NoticeState.SENT:
        values["notice_sent_at"] = utcnow()
    await session.execute(update(Job).where(Job.id == job_id).values(**values))


# The tables an import grows; see `analyze_growing_tables`.
GROWING_TABLES = (
    "stripe_customers",
    "payments",
    "checkout_sessions",
    "subscriptions",
    "contacts",
    "contact_segments",
    "consent_events",
)


async def analyze_growing_tables(session: AsyncSession) -> None:
    """Refresh the planner's statistics of the tables an import fills. They grow from
    nothing to millions of rows in minutes, faster than autovacuum analyses them, and plans
    made for "a few rows" turn index look-ups into scans of the whole account."""
    await session.execute(text(f"ANALYZE {', '.join(GROWING_TABLES)}"))
