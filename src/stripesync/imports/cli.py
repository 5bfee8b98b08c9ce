"""`stripesync import --account ID` (start or follow, with a live progress bar) and
`stripesync jobs [--account ID]`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from stripesync.config import Settings
from stripesync.db import create_engine, create_session_factory, transaction
from stripesync.imports import repository, service
from stripesync.kit.errors import ApiError
from stripesync.kit.queue import create_redis
from stripesync.models import ACTIVE_JOB_STATES, Job, JobKind

POLL_SECONDS = 0.5


async def start_or_current(settings: Settings, account_id: str) -> tuple[str, bool]:
    """The account's active import job, else a new one (enqueued); (job id, started)."""
    from stripesync.accounts import repository as accounts_repository

    assert settings.redis_url is not None
    engine = create_engine(settings, pool_size=1)
    redis = create_redis(settings.redis_url)
    try:
        factory = create_session_factory(engine)
        async with transaction(factory) as session:
            connection = await accounts_repository.active_connection(session, account_id)
            if connection is None:
                raise ApiError(
                    409, "stripe_not_connected", f"{account_id} has no Stripe connection"
                )
            current = await repository.active_import(session, connection.id)
            if current is not None:
                job_id, started = current.id, False
            else:
                earlier = await repository.latest_import(session, account_id)
                kind = JobKind.RESYNC if earlier is not None else JobKind.IMPORT
                job = await service.ensure_import_job(session, connection, kind)
                job_id, started = job.id, True
            connection_id = connection.id
        await service.enqueue_run(redis, account_id, connection_id)
        return job_id, started
    finally:
        await redis.aclose()
        await engine.dispose()


async def follow(settings: Settings, job_id: str, console: Console) -> Job:
    """Show the job's progress until it ends: phase, bar, done/total, rate and ETA."""
    engine = create_engine(settings, pool_size=1)
    factory = create_session_factory(engine)
    columns = (
        TextColumn("[bold]{task.description:<18}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]:>8} objects/s"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    try:
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task("queued", total=None, rate="-")
            first: tuple[float, int] | None = None
            while True:
                async with transaction(factory) as session:
                    job = await session.get(Job, job_id, populate_existing=True)
                assert job is not None
                progress = job.progress or {}
                done, total = int(progress.get("done", 0)), int(progress.get("total", 0))
                now = time.monotonic()
                if first is None and done:
                    first = (now, done)
                rate = "-"
                if first is not None and now > first[0] and done > first[1]:
                    rate = f"{(done - first[1]) / (now - first[0]):,.0f}"
                bar.update(
                    task,
                    description=str(progress.get("phase") or job.state),
                    completed=done,
                    total=total or None,
                    rate=rate,
                )
                if job.state not in ACTIVE_JOB_STATES:
                    return job
                await asyncio.sleep(POLL_SECONDS)
    finally:
        await engine.dispose()


def print_outcome(job: Job, console: Console) -> None:
    report: dict[str, Any] = job.report or {}
    console.print(f"job {job.id}: [bold]{job.state}[/bold]")
    if job.error:
        console.print(f"  error: {job.error}")
    for key in ("imported", "skipped"):
        if report.get(key):
            values = ", ".join(f"{k} {v:,}" for k, v in sorted(report[key].items()))
            console.print(f"  {key}: {values}")
    for key in ("contacts_created", "already_contact", "optin_emails", "stripe_requests"):
        if key in report:
            console.print(f"  {key.replace('_', ' ')}: {report[key]:,}")


def run_import(settings: Settings, account_id: str, *, follow_it: bool = True) -> int:
    console = Console()

    async def run() -> int:
        try:
            job_id, started = await start_or_current(settings, account_id)
        except ApiError as exc:
            console.print(f"stripesync: {exc.message}")
            return 1
        console.print(f"{'started' if started else 'following'} import job {job_id}")
        if not follow_it:
            return 0
        job = await follow(settings, job_id, console)
        print_outcome(job, console)
        return 0 if job.state == "succeeded" else 1

    return asyncio.run(run())


def list_jobs(settings: Settings, account_id: str | None, state: str | None, limit: int) -> None:
    async def run() -> list[Job]:
        engine = create_engine(settings, pool_size=1)
        try:
            async with transaction(create_session_factory(engine)) as session:
                rows = await repository.list_jobs(
                    session, account_id=account_id, state=state, limit=limit, after=None
                )
                return list(rows)
        finally:
            await engine.dispose()

    table = Table("id", "account", "kind", "state", "progress", "created", "finished", "error")
    for job in asyncio.run(run()):
        progress = job.progress or {}
        table.add_row(
            job.id,
            job.account_id,
            job.kind,
            job.state,
            f"{progress.get('phase', '')} {progress.get('done', 0):,}/{progress.get('total', 0):,}",
            job.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            job.finished_at.strftime("%Y-%m-%d %H:%M:%S") if job.finished_at else "",
            (job.error or "")[:60],
        )
    Console().print(table)
