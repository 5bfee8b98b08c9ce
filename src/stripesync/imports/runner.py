"""Running one import job: readers fetch windows in parallel, a few appliers store pages,
then the contacts the pages touched are finished in bulk.

    readers (import_concurrency) ──pages──▶ a queue per applier ──▶ appliers ──▶ Postgres
        each: claim a window, read it page by page      one transaction for the pages waiting
        (budget + backoff), split the widest one when   (≤ APPLY_BATCH_OBJECTS): their rows
        nothing is left to claim                        and links, the contacts they touched
                                                        (owed a finish), their windows'
                                                        checkpoints, the job's lease
    then: the contacts owed a finish, FINISH_BATCH per transaction: recomputed once each,
    hooks told (segments, opt-in, sync); beside them, payments stored beside their
    customer's uncommitted row relinked (two appliers at once miss each other's rows),
    whose contacts a second pass finishes again

Memory stays flat: at most `2 * import_concurrency` pages are in flight. A window's pages
always go to the same applier (by window id), so each window's checkpoint advances in order.
Appliers of one account may insert the same new contact: Postgres may abort one with a
deadlock now and then, and those pages are simply applied again (rolled back whole,
checkpoints included). Finishing each contact once at the end, not with every page that
touched it, is what keeps the page transactions short and free of the contacts' locks:
a contact's activity, segments and sync wait until the lists are read.

Resuming: the checkpoint advances only with the pages it describes, so after a crash the
readers start again from each window's last applied object, and nothing is applied twice
(the apply functions are idempotent anyway); the contacts owed a finish are committed with
their pages and leave the debt with their finish. The lease, checked in every transaction,
fences off a worker that was presumed dead.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
import structlog
from arq.connections import ArqRedis
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.context import ActivityContext
from stripesync.clients.stripe import StripeClient, StripeError
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.imports import repository
from stripesync.imports.applying import (
    FINISH_BATCH,
    PageOfObjects,
    apply_pages,
    finish_touched,
    relink_payments_off_customer,
)
from stripesync.imports.reading import BUDGET_MARGIN_SECONDS, StripeReader, stripe_budget
from stripesync.imports.windows import (
    OPTIN_CUSTOMER_DAYS,
    Window,
    estimate,
    initial_plan,
    next_to_claim,
    phase,
    split_point,
)
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import RateLimiter
from stripesync.models import (
    ConnectionMode,
    ConnectionStatus,
    Job,
    JobState,
    StripeConnection,
)

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

PAYER_BATCH = 100
# An applier takes the pages waiting in its queue into one transaction, up to this many
# objects in all (the window's checkpoints and the lease are written once for them all).
APPLY_BATCH_OBJECTS = 1_000
# A page's transaction aborted by a deadlock (40P01) or a serialization failure (40001) is
# applied again, up to this many times in all.
PAGE_ATTEMPTS = 5
_RETRYABLE = {"40P01", "40001"}
# Objects applied before the planner statistics are refreshed the first time; then each time
# the count doubles (repository.analyze_growing_tables).
ANALYZE_FIRST = 2_000


def _retryable(error: DBAPIError) -> bool:
    return getattr(error.orig, "sqlstate", None) in _RETRYABLE


class LeaseLost(Exception):
    """Another runner holds the job now (ours expired): stop without touching anything."""


class ImportCancelled(Exception):
    """The connection was revoked or the job cancelled: stop between pages."""


class ImportPaused(Exception):
    """This turn's time is up (`stop_at`): stop between pages; the next turn resumes."""


@dataclass(frozen=True)
class Deps:
    session_factory: SessionFactory
    http: httpx.AsyncClient
    redis: ArqRedis
    settings: Settings


@dataclass
class Page:
    window: Window
    objects: list[dict[str, Any]]
    cursor: str | None
    oldest: int | None
    done: bool
    fetched_at: datetime


@dataclass
class _Advance:
    """What the pages of one transaction move one window by."""

    window: Window
    counts: Counter[str]  # the window's outcome counts with these pages'
    pages: list[Page] = field(default_factory=list)

    @property
    def last(self) -> Page:
        return self.pages[-1]

    @property
    def objects(self) -> int:
        return sum(len(page.objects) for page in self.pages)


def _position(window: Window) -> tuple[str | None, int | None, int, int]:
    return window.cursor, window.oldest_created, window.objects, window.pages


def _restore(window: Window, position: tuple[str | None, int | None, int, int]) -> None:
    window.cursor, window.oldest_created, window.objects, window.pages = position


async def _stop(*tasks: asyncio.Task[Any]) -> None:
    """Cancel these tasks and wait until they are done, cancelling again every second: a
    cancellation can be lost when it races with the completion of what a task awaits."""
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=1.0)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: the first failure is raised by the caller


def budget_name(connection: StripeConnection) -> str:
    return f"stripe:{connection.stripe_account_id}:{'live' if connection.livemode else 'test'}"


class ImportRun:
    """One runner's turn at one job (it may be the job's second turn, after a crash)."""

    def __init__(
        self,
        deps: Deps,
        job: Job,
        connection: StripeConnection,
        token: str,
        stop_at: float | None = None,
    ) -> None:
        self.deps = deps
        self.stop_at = stop_at  # time.monotonic() after which the turn pauses between pages
        self.settings = deps.settings
        self.job = job
        self.connection = connection
        self.token = token
        self.lease = timedelta(seconds=self.settings.import_lease_seconds)
        assert job.started_at is not None
        self.started_at: datetime = job.started_at
        limiter = RateLimiter(
            deps.redis,
            budget_name(connection),
            per_second=stripe_budget(self.settings, connection.livemode),
            margin_seconds=BUDGET_MARGIN_SECONDS,
            api="stripe",
        )
        self.reader = StripeReader(
            StripeClient(deps.http, self.settings),
            limiter,
            self.settings,
            connection.stripe_account_id,
        )
        self.windows: list[Window] = []
        self.requests_before = int(job.report.get("stripe_requests", 0))
        self.extra: Counter[str] = Counter(job.report.get("extra", {}))
        appliers = max(1, self.settings.import_appliers)
        self.queues: list[asyncio.Queue[Page | None]] = [
            asyncio.Queue(maxsize=max(2, 2 * max(1, self.settings.import_concurrency) // appliers))
            for _ in range(appliers)
        ]
        self.page_retries = 0
        self.contacts_finished = 0  # this turn's, and the time it took
        self.finish_seconds = 0.0
        self.finish_after = 0  # the highest contact id a finisher took in this pass
        self.finish_lock = asyncio.Lock()
        self.next_analyze = ANALYZE_FIRST

    # --- the whole turn -----------------------------------------------------------------------

    async def run(self) -> None:
        await self._load_or_plan()
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            if not all(w.done for w in self.windows):
                await self._read_and_apply()
            if self.connection.mode == ConnectionMode.OPTIN:
                await self._recent_payers()
            # The relink pass runs beside the first finish pass: the contacts it moves
            # payments between are owed a finish again, paid by the next pass.
            await self._finish_contacts(beside=self._relink_payments_off_customer())
            await self._finish()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(BaseException):
                await heartbeat

    async def _load_or_plan(self) -> None:
        async with transaction(self.deps.session_factory) as session:
            rows = await repository.windows(session, self.job.id)
            if not rows:
                plan = initial_plan(
                    self.connection.mode, self.started_at, self.settings.import_windows_per_list
                )
                await self._check(session)
                await repository.insert_windows(session, self.job.id, plan)
                await self._fenced(session)
                rows = await repository.windows(session, self.job.id)
        self.windows = [Window.from_row(row) for row in rows]

    @contextlib.asynccontextmanager
    async def _batch_transaction(self) -> AsyncIterator[AsyncSession]:
        """A transaction for a batch (pages, contacts to finish) with PostgreSQL's JIT off:
        compiling each of its few large statements (the activity refresh, the segments of
        1,000 contacts) took ~0.2 s, more than the statement itself saved."""
        async with transaction(self.deps.session_factory) as session:
            await session.execute(text("SET LOCAL jit = off"))
            yield session

    async def _check(self, session: Any) -> None:
        """Stop early (no lock taken) unless the connection is live and the lease ours."""
        status = await repository.connection_status(session, self.connection.id)
        if status != ConnectionStatus.CONNECTED:
            raise ImportCancelled("the Stripe connection is no longer active")
        job = await session.get(Job, self.job.id, populate_existing=True)
        if job is None or job.state == JobState.CANCELLED:
            raise ImportCancelled("the job was cancelled")
        if job.lease_token != self.token:
            raise LeaseLost(self.job.id)

    async def _fenced(self, session: Any, **values: Any) -> None:
        """Renew the lease inside the transaction that writes the job's effects, as its
        LAST statement: the job row is locked only just before commit (a disconnect, which
        locks the account and then the job, never waits on us while we wait on it), and a
        page whose lease was lost or whose job was cancelled meanwhile rolls back."""
        if not await repository.renew(session, self.job.id, self.token, self.lease, **values):
            await self._check(session)
            raise LeaseLost(self.job.id)

    async def _heartbeat(self) -> None:
        """Keep the lease while pages are slow to come (backoff, a slow Stripe)."""
        interval = max(0.2, self.settings.import_lease_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            async with transaction(self.deps.session_factory) as session:
                await self._fenced(session, progress=self.progress())

    def _late(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    def _pause_if_late(self) -> None:
        if self._late():
            raise ImportPaused(self.job.id)

    # --- readers and the applier -------------------------------------------------------------

    async def _read_and_apply(self) -> None:
        readers = [
            asyncio.create_task(self._reader())
            for _ in range(max(1, self.settings.import_concurrency))
        ]
        appliers = [asyncio.create_task(self._applier(queue)) for queue in self.queues]

        async def all_read() -> None:
            await asyncio.gather(*readers)
            for queue in self.queues:
                await queue.put(None)

        reading = asyncio.create_task(all_read())
        try:
            pending = {reading, *appliers}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_EXCEPTION)
                for task in done:
                    task.result()  # raises the first failure
        finally:
            await _stop(reading, *readers)
            # Appliers are not cancelled inside a transaction (one may hold locks another
            # waits for): each ends the page in hand, committed or rolled back, then stops.
            for queue in self.queues:
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait(None)
            await asyncio.gather(*appliers, return_exceptions=True)

    async def _claim(self) -> Window | None:
        while True:
            window = next_to_claim(self.windows)
            if window is not None:
                window.claimed = True
                return window
            split = split_point(self.windows)
            if split is None:
                return None
            old, cut = split
            fresh = Window(id=0, resource=old.resource, gte=old.gte, lt=cut, claimed=True)
            old.gte = cut  # from now on its reader stops at the cut (see _reader)
            self.windows.append(fresh)
            async with transaction(self.deps.session_factory) as session:
                await self._check(session)
                fresh.id = await repository.split_window(session, self.job.id, old.id, cut)
                await self._fenced(session)
            return fresh

    async def _reader(self) -> None:
        while (window := await self._claim()) is not None:
            spec = window.spec
            while not window.fetch_done:
                page = await self.reader.page(
                    spec.path, spec.params, window.gte, window.lt, window.fetch_cursor
                )
                fetched_at = utcnow()
                # After a split the request may have started below the new lower bound:
                # objects under it belong to the other part (the list is newest first).
                kept = [o for o in page.data if int(o.get("created", 0)) >= window.gte]
                window.fetch_done = not page.has_more or len(kept) < len(page.data)
                if page.data:
                    window.fetch_cursor = page.last_id
                if kept:
                    window.fetch_oldest = int(kept[-1]["created"])
                window.fetched += len(kept)
                await self.queues[window.id % len(self.queues)].put(
                    Page(
                        window=window,
                        objects=kept,
                        cursor=window.fetch_cursor,
                        oldest=window.fetch_oldest,
                        done=window.fetch_done,
                        fetched_at=fetched_at,
                    )
                )

    async def _applier(self, queue: asyncio.Queue[Page | None]) -> None:
        last = False
        while not last and (page := await queue.get()) is not None:
            # The pages read meanwhile join this one: one transaction, one finish of their
            # contacts, a fixed number of statements for them all.
            pages = [page]
            while sum(len(p.objects) for p in pages) < APPLY_BATCH_OBJECTS and not queue.empty():
                more = queue.get_nowait()
                if more is None:
                    last = True
                    break
                pages.append(more)
            await self._retrying(self._apply_pages, pages)
            await self._analyze_if_grown()
            self._pause_if_late()

    async def _retrying(self, step: Callable[[_T], Awaitable[Any]], arg: _T) -> Any:
        """Run a transaction step, again when Postgres aborted it for a deadlock or a
        serialization failure (rolled back whole), up to `PAGE_ATTEMPTS` times in all."""
        for attempt in range(1, PAGE_ATTEMPTS + 1):
            try:
                return await step(arg)
            except DBAPIError as error:
                if not _retryable(error) or attempt == PAGE_ATTEMPTS:
                    raise
                self.page_retries += 1
                detail = getattr(error.orig, "detail", None)  # which processes, which locks
                log.info("import_page_retried", job_id=self.job.id, attempt=attempt, detail=detail)

    async def _analyze_if_grown(self) -> None:
        applied = sum(w.objects for w in self.windows)
        if applied < self.next_analyze:
            return
        self.next_analyze = 2 * applied  # set first: the other appliers go on meanwhile
        async with transaction(self.deps.session_factory) as session:
            await repository.analyze_growing_tables(session)

    async def _apply_objects(self, session: Any, pages: list[Page]) -> list[Counter[str]]:
        return await apply_pages(
            session,
            self.job.id,
            [
                PageOfObjects(
                    ActivityContext.for_connection(self.connection, page.fetched_at),
                    page.window.resource,
                    page.objects,
                )
                for page in pages
            ],
            job_started_at=self.started_at,
        )

    async def _apply_pages(self, pages: list[Page]) -> None:
        """Apply these pages with their windows' checkpoints and the job's lease, in ONE
        transaction (a window's pages in order)."""
        async with self._batch_transaction() as session:
            await self._check(session)
            advances: dict[int, _Advance] = {}
            for page, counts in zip(pages, await self._apply_objects(session, pages), strict=True):
                advance = advances.setdefault(
                    id(page.window), _Advance(page.window, Counter(page.window.counts))
                )
                advance.counts.update(counts)
                advance.pages.append(page)
            for advance in advances.values():
                await repository.checkpoint(
                    session,
                    advance.window.id,
                    cursor=advance.last.cursor,
                    oldest_created=advance.last.oldest,
                    objects=advance.objects,
                    pages=len(advance.pages),
                    done=advance.last.done,
                    counts=dict(advance.counts),
                )
            # The in-memory checkpoints follow the commit: tentatively for the progress
            # written with it, undone if the lease turns out lost.
            before = [(a.window, _position(a.window)) for a in advances.values()]
            for advance in advances.values():
                window = advance.window
                window.cursor, window.oldest_created = advance.last.cursor, advance.last.oldest
                window.objects += advance.objects
                window.pages += len(advance.pages)
            try:
                await self._fenced(session, progress=self.progress(), report=self.running_report())
            except BaseException:
                for window, position in before:
                    _restore(window, position)
                raise
            for advance in advances.values():
                advance.window.done = advance.last.done
                advance.window.counts = dict(advance.counts)

    # --- opt-in mode: customers created earlier who paid in the last 6 months ---------------

    async def _recent_payers(self) -> None:
        since = self.started_at - timedelta(days=OPTIN_CUSTOMER_DAYS)
        missing: list[str] = []  # deleted at Stripe since: nothing to fetch again
        while True:
            async with transaction(self.deps.session_factory) as session:
                ids = await repository.recent_unknown_customers(
                    session,
                    self.connection.account_id,
                    self.connection.livemode,
                    since,
                    missing,
                    PAYER_BATCH,
                )
            if not ids:
                return
            found = await asyncio.gather(*(self._customer_or_none(i) for i in ids))
            ctx = ActivityContext.for_connection(self.connection, utcnow())
            async with self._batch_transaction() as session:
                await self._check(session)
                objects = []
                for customer_id, obj in zip(ids, found, strict=True):
                    if obj is None:
                        missing.append(customer_id)
                    else:
                        objects.append(obj)
                (counts,) = await apply_pages(
                    session,
                    self.job.id,
                    [PageOfObjects(ctx, "customers", objects)],
                    job_started_at=self.started_at,
                )
                self.extra.update(counts)
                self.extra["recent_payers"] += len(objects)
                await self._fenced(
                    session, progress=self.progress("recent_payers"), report=self.running_report()
                )
            self._pause_if_late()

    # --- payments applied beside their customer, mended ------------------------------------

    async def _relink_payments_off_customer(self) -> None:
        """Link the payments that an applier stored while another was storing their
        customer (`relink_payments_off_customer`), FINISH_BATCH per transaction."""
        after = 0
        while (last := await self._retrying(self._relink_some_payments, after)) is not None:
            after = last
            self._pause_if_late()

    async def _relink_some_payments(self, after: int) -> int | None:
        async with self._batch_transaction() as session:
            await self._check(session)
            ctx = ActivityContext.for_connection(self.connection, utcnow())
            last = await relink_payments_off_customer(
                session, ctx, self.job.id, after=after, limit=FINISH_BATCH
            )
            if last is not None:
                await self._fenced(session)
            return last

    # --- the contacts the pages touched, finished in bulk -----------------------------------

    async def _finish_contacts(self, beside: Awaitable[None] | None = None) -> None:
        """Recompute every contact the pages touched and tell the hooks (segments, opt-in,
        sync), `FINISH_BATCH` contacts per transaction, several transactions at once: each
        commit shrinks the debt, so a crash resumes where it stopped. `beside` runs along
        the first pass; the debt it adds is paid by the next.

        The finishers stop between batches only, and all of them are waited for: one still
        running after the turn ended would hold rows that the next turn's finishers skip
        (and so never finish, once it rolls back). Done only when nothing is owed."""
        started = time.monotonic()

        async def finisher() -> None:
            while (span := await self._next_span()) is not None:
                # Not `+= await ...`: that reads the count before awaiting, and the other
                # finishers' additions made meanwhile would be lost.
                finished = await self._retrying(self._finish_span, span)
                self.contacts_finished += finished
                if self._late():
                    return

        while True:
            # Each pass takes the debt in id order from the start: what a rolled-back batch
            # gave back below the others' cursor is taken by the next pass.
            self.finish_after = 0
            # As many at once as appliers: each takes contacts no other one holds.
            outcomes = await asyncio.gather(
                *(finisher() for _ in self.queues),
                *([beside] if beside is not None else []),
                return_exceptions=True,
            )
            beside = None
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            async with transaction(self.deps.session_factory) as session:
                if not await repository.touched_left(session, self.job.id):
                    break
            self._pause_if_late()
        self.finish_seconds += time.monotonic() - started
        log.info(
            "import_contacts_finished",
            job_id=self.job.id,
            contacts=self.contacts_finished,
            seconds=round(self.finish_seconds, 1),
        )

    async def _next_span(self) -> tuple[int, int] | None:
        """The ids (first, last) of the next FINISH_BATCH contacts owed a finish, for one
        finisher alone: the finishers share one cursor, so none walks the debt already paid
        again, nor the rows another one is finishing (when each took "the next 1,000" with
        SKIP LOCKED, the last one skipped up to 3,000 locked rows first)."""
        async with self.finish_lock, transaction(self.deps.session_factory) as session:
            span = await repository.touched_span(
                session, self.job.id, self.finish_after, FINISH_BATCH
            )
            if span is not None:
                self.finish_after = span[1]
            return span

    async def _finish_span(self, span: tuple[int, int]) -> int:
        first, last = span
        async with self._batch_transaction() as session:
            await self._check(session)
            ctx = ActivityContext.for_connection(self.connection, utcnow())
            finished = await finish_touched(
                session, ctx, self.job.id, FINISH_BATCH, after=first - 1, upto=last
            )
            if finished:
                await self._fenced(
                    session, progress=self.progress("contacts"), report=self.running_report()
                )
            return len(finished)

    async def _customer_or_none(self, customer_id: str) -> dict[str, Any] | None:
        try:
            return await self.reader.customer(customer_id)
        except StripeError as exc:
            if exc.status == 404:
                return None
            raise

    # --- progress and the report -------------------------------------------------------------

    def progress(self, current: str | None = None) -> dict[str, Any]:
        done, total = estimate(self.windows)
        return {"phase": current or phase(self.windows), "done": done, "total": total}

    def running_report(self) -> dict[str, Any]:
        return {
            "stripe_requests": self.requests_before + self.reader.stats.requests,
            "rate_limited": int(self.job.report.get("rate_limited", 0))
            + self.reader.stats.rate_limited,
            "extra": dict(self.extra),
        }

    async def _finish(self) -> None:
        totals: Counter[str] = Counter(self.extra)
        for window in self.windows:
            totals.update(window.counts)
        totals.pop("recent_payers", None)
        async with transaction(self.deps.session_factory) as session:
            await self._check(session)
            report = build_report(
                totals,
                running=self.running_report(),
                recent_payers=self.extra.get("recent_payers", 0),
                contacts_created=await repository.contacts_created_since(
                    session, self.connection.account_id, self.started_at
                ),
                optin_emails=await repository.optin_emails_since(
                    session, self.connection.account_id, self.started_at
                ),
            )
            done, _ = estimate(self.windows)
            finished = await repository.finish(
                session,
                self.job.id,
                self.token,
                JobState.SUCCEEDED,
                report=report,
                progress={"phase": "done", "done": done, "total": done},
                notify=True,
            )
            if not finished:
                await self._check(session)
                raise LeaseLost(self.job.id)
        log.info(
            "import_succeeded",
            job_id=self.job.id,
            account_id=self.connection.account_id,
            objects=done,
            stripe_requests=report["stripe_requests"],
        )


def build_report(
    totals: Counter[str],
    *,
    running: dict[str, Any],
    recent_payers: int,
    contacts_created: int,
    optin_emails: int,
) -> dict[str, Any]:
    """The job report of api.md: what was read, what it made, and skips by reason."""

    def group(prefix: str) -> dict[str, int]:
        return {
            key.split(".", 1)[1]: value
            for key, value in sorted(totals.items())
            if key.startswith(prefix + ".") and value
        }

    people = group("contacts")
    return {
        "imported": group("imported"),
        "contacts_created": contacts_created,
        "already_contact": people.get("already_contact", 0),
        "optin_emails": optin_emails,
        "skipped": group("skipped"),
        "recent_payers_fetched": recent_payers,
        "stripe_requests": running["stripe_requests"],
        "rate_limited": running["rate_limited"],
    }


def new_lease_token() -> str:
    return uuid.uuid4().hex


async def run_job(deps: Deps, job_id: str, *, stop_at: float | None = None) -> str:
    """Run (or resume) one import job; answers what happened to it this turn:
    `succeeded`, `cancelled`, `busy` (someone else holds it), `released` (a transient
    failure: the sweeper runs it again), `paused` (past `stop_at`, a `time.monotonic()`
    value: the lease and the attempt are given back, the caller asks for the next turn)
    or `failed`."""
    token = new_lease_token()
    lease = timedelta(seconds=deps.settings.import_lease_seconds)
    async with transaction(deps.session_factory) as session:
        job = await repository.claim(session, job_id, token, lease)
        connection = (
            await session.get(StripeConnection, job.connection_id)
            if job is not None and job.connection_id is not None
            else None
        )
    if job is None:
        return "busy"
    if connection is None or connection.status != ConnectionStatus.CONNECTED:
        await _cancel(deps, job_id)
        return "cancelled"
    log.info("import_started", job_id=job_id, account_id=job.account_id, attempt=job.attempts)
    run = ImportRun(deps, job, connection, token, stop_at)
    try:
        await run.run()
    except ImportCancelled:
        await _cancel(deps, job_id)
        return "cancelled"
    except LeaseLost:
        log.warning("import_lease_lost", job_id=job_id)
        return "busy"
    except ImportPaused:
        async with transaction(deps.session_factory) as session:
            await repository.release(session, job_id, token, job.error, attempt_used=False)
        log.info("import_paused", job_id=job_id, progress=run.progress())
        return "paused"
    except asyncio.CancelledError:
        # Worker shutdown or an arq abort: give the lease back; the sweeper decides.
        with contextlib.suppress(Exception):
            async with transaction(deps.session_factory) as session:
                await repository.release(session, job_id, token, "interrupted")
        raise
    except StripeError as exc:
        # Stripe refused for good (a revoked key, a missing permission): retrying won't help.
        await _fail(deps, job_id, token, f"Stripe refused the import: {exc.code}")
        return "failed"
    except Exception as exc:
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.warning("import_interrupted", job_id=job_id, error=error, attempt=job.attempts)
        if job.attempts >= deps.settings.import_max_attempts:
            await _fail(deps, job_id, token, error)
            return "failed"
        async with transaction(deps.session_factory) as session:
            await repository.release(session, job_id, token, error)
        return "released"
    return "succeeded"


async def _cancel(deps: Deps, job_id: str) -> None:
    async with transaction(deps.session_factory) as session:
        await repository.finish(
            session,
            job_id,
            None,
            JobState.CANCELLED,
            error="cancelled: Stripe was disconnected",
            notify=False,
        )
    log.info("import_cancelled", job_id=job_id)


async def _fail(deps: Deps, job_id: str, token: str, error: str) -> None:
    async with transaction(deps.session_factory) as session:
        await repository.finish(session, job_id, token, JobState.FAILED, error=error, notify=True)
    log.warning("import_failed", job_id=job_id, error=error)
