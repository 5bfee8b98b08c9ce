"""Bulk imports (`contacts_json_import`): recorded, sent, polled, settled; resumed after a
run that died.

- Each batch's row (its contacts at the versions sent, its lists) is committed before the
  import is sent: a re-run resumes it rather than importing again, and it is the
  write-ahead record that the platform may have put those contacts on those lists. It is
  written out onto the contacts (`repository.note_lists_maybe_added`) whenever the outcome
  is not a plain success: a failed activity, rows the platform refused, an answer that
  never came. A success writes the lists as synced.
- Each import is sent as soon as its batch is complete (`ImportStream`), checked for
  permission just before, a batch that fills while the next ones are still read and built
  at once: the platform works on them side by side.
- An import is polled once early, once more on the way to learn its pace, and then just
  after the end that pace points to (`next_poll_in`); it is settled with one statement
  from its row as soon as its own activity ends, while the others still run.
- Marking an import's contacts synced rewrites each one's row (tens of microseconds a
  contact): it is done ahead, while the platform finishes, in a transaction that the poll
  expected to see the end commits when it sees a plain success, and rolls back otherwise
  (`_settle_ahead`). It starts a time proportional to the contacts before that poll, so
  the row locks it takes are held about that long, not for the whole import.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from stripesync.clients.constant_contact import Activity, ConstantContactClient
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import QuotaExhausted
from stripesync.models.sync import BatchKind, BatchState, SyncBatch
from stripesync.sync import repository
from stripesync.sync.batching import ImportBatch

if TYPE_CHECKING:
    from stripesync.sync.service import SyncReport

# Imports sent at once (each holds its encoded body, up to 4 MB, until answered).
IMPORTS_IN_FLIGHT = 4
# Polling an import: at most this long between two polls, and giving up after this long.
MAX_POLL_INTERVAL_SECONDS = 30.0
GIVE_UP_POLLING_SECONDS = 3600.0
# Marking an import's contacts synced ahead of the poll expected to see its end starts this
# long before that poll per contact (at least the minimum): about what the marking takes.
SETTLE_AHEAD_SECONDS_PER_CONTACT = 60e-6
SETTLE_AHEAD_MIN_SECONDS = 0.25
# Its poll answers within this long after it is due, or the marking is rolled back (the
# contacts' row locks are not held through the client's retries of a failing platform).
SETTLE_AHEAD_POLL_SECONDS = 5.0


@dataclass(slots=True)
class _Sent:
    batch_id: int
    activity_id: str
    accepted_at: float  # the event loop's clock when the platform's answer came
    keys: list[int]
    rows: list[Mapping[str, str]]


class ImportStream:
    """Sends import batches as they are handed over (`submit`), while the caller goes on
    reading and building the next ones, and settles each as soon as its own activity ends.

    Each batch is checked for permission and recorded just before it is sent, at most
    `IMPORTS_IN_FLIGHT` at once between the check and the platform's answer. Contacts
    leave `pending` once their import is accepted, or when they lost permission. After a
    failure nothing more is sent (those contacts stay in `pending`); those already sent
    are still polled and settled, and `finish` raises the failure (out of quota first).

    Polls share the platform's request budget with the imports: none is polled before
    every batch read so far is sent (`all_read`), lest a poll delay the last import.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        client: ConstantContactClient,
        account_id: str,
        versions: Mapping[int, int],
        pending: set[int],
        report: SyncReport,
        poll_interval: float,
    ) -> None:
        self._session_factory = session_factory
        self._client = client
        self._account_id = account_id
        self._versions = versions  # contact id → the version read
        self._pending = pending
        self._report = report
        self._poll_interval = poll_interval
        self._slots = asyncio.Semaphore(IMPORTS_IN_FLIGHT)
        self._tasks: list[asyncio.Task[None]] = []
        self._failures: list[BaseException] = []
        self._reading = True
        self._sending = 0  # batches between their permission check and the answer
        self._all_sent = asyncio.Event()

    def submit(self, batch: ImportBatch[int]) -> None:
        """Send this batch (its contacts' versions are in `versions`) and settle it."""
        if not self._failures:
            self._sending += 1
            self._check_all_sent()
            self._tasks.append(asyncio.create_task(self._run(batch)))

    def all_read(self) -> None:
        """No more batches come from the read (some held back may still be submitted)."""
        self._reading = False
        self._check_all_sent()

    async def finish(self) -> None:
        """Wait until every batch submitted is settled (or failed); raise the failure."""
        self.all_read()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._failures:
            raise next(
                (f for f in self._failures if isinstance(f, QuotaExhausted)), self._failures[0]
            )

    async def cancel(self) -> None:
        """Stop what is still running (a run that failed elsewhere): a batch recorded but
        not settled is resumed by the next run."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _check_all_sent(self) -> None:
        if self._reading or self._sending:
            self._all_sent.clear()
        else:
            self._all_sent.set()

    async def _run(self, batch: ImportBatch[int]) -> None:
        try:
            async with self._slots:
                if self._failures:
                    return
                recorded = await _record(
                    self._session_factory, self._account_id, [batch], self._versions
                )
                self._pending.difference_update(recorded.lost)
                if not recorded.rows:
                    return
                ((batch_id, kept),) = recorded.rows
                sent = await _send(
                    self._session_factory, self._client, batch_id, kept, self._pending
                )
        except Exception as exc:  # raised by `finish`
            self._failures.append(exc)
            return
        finally:
            self._sending -= 1
            self._check_all_sent()
        try:
            await self._all_sent.wait()
            await _poll_and_settle(
                self._session_factory, self._client, sent, self._report, self._poll_interval
            )
        except Exception as exc:  # raised by `finish`
            self._failures.append(exc)


async def resume_imports(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    account_id: str,
    report: SyncReport,
    poll_interval: float,
) -> None:
    """Finish what a run that died left started: poll its activity instead of re-importing."""
    async with transaction(session_factory) as session:
        batches = list(await repository.started_batches(session, account_id))
    for batch in batches:
        if batch.activity_id is None:
            # Died before the platform answered, which may have accepted the import: its
            # lists are noted on its contacts, who still lag and go again.
            async with transaction(session_factory) as session:
                await repository.note_batch_lists(session, batch.id)
                stored = await session.get(SyncBatch, batch.id)
                assert stored is not None
                stored.state = BatchState.FAILED.value
                stored.error = "run ended before the platform answered"
                stored.finished_at = utcnow()
            continue
        done = await client.wait_for_activity(batch.activity_id, interval=poll_interval)
        await _settle(session_factory, batch.id, done, report, None, None)


@dataclass
class _Recorded:
    rows: list[tuple[int, ImportBatch[int]]]  # (batch row id, batch) of those not empty
    lost: set[int]  # contacts dropped: no permission any more


async def _record(
    session_factory: SessionFactory,
    account_id: str,
    batches: Sequence[ImportBatch[int]],
    versions: Mapping[int, int],
) -> _Recorded:
    async with transaction(session_factory) as session:
        # Consent may have changed since the run read it: drop whoever lost it (a batch
        # only shrinks, so it stays within the platform's limits).
        lost = await repository.without_permission(
            session, account_id, [k for batch in batches for k in batch.keys]
        )
        records: list[tuple[SyncBatch, ImportBatch[int]]] = []
        for batch in batches:
            if lost:
                kept = [
                    (k, r) for k, r in zip(batch.keys, batch.rows, strict=True) if k not in lost
                ]
                batch.keys = [k for k, _ in kept]
                batch.rows = [r for _, r in kept]
            if not batch.keys:
                continue
            record = SyncBatch(
                account_id=account_id,
                kind=BatchKind.JSON_IMPORT.value,
                list_ids=list(batch.list_ids),
                contacts={str(cid): versions[cid] for cid in batch.keys},
            )
            session.add(record)
            records.append((record, batch))
        await session.flush()
        return _Recorded([(record.id, batch) for record, batch in records], lost)


async def _send(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    batch_id: int,
    batch: ImportBatch[int],
    pending: set[int],
) -> _Sent:
    activity = await client.contacts_json_import(batch.rows, batch.list_ids)
    async with transaction(session_factory) as session:
        await repository.set_batch_activity(session, batch_id, activity.activity_id)
    pending.difference_update(batch.keys)
    accepted_at = asyncio.get_running_loop().time()
    return _Sent(batch_id, activity.activity_id, accepted_at, batch.keys, batch.rows)


async def _poll_and_settle(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    sent: _Sent,
    report: SyncReport,
    interval: float,
) -> None:
    """Poll an import until it finishes, each poll when `poll_plan` says, and settle it.
    Polls share the request budget with everything else: each one too many delays the
    others, and each one too early delays the end. The contacts are marked synced ahead of
    the first poll expected to see the end (`_settle_ahead`); when that poll does not see
    a plain success, they are settled once the activity ends, as it ended."""
    loop = asyncio.get_running_loop()
    previous: tuple[float, int] | None = None
    ahead = True
    activity = await client.get_activity(sent.activity_id)
    while not activity.finished:
        elapsed = loop.time() - sent.accepted_at
        if elapsed > GIVE_UP_POLLING_SECONDS:
            raise TimeoutError(f"activity {sent.activity_id} still {activity.state}")
        percent = activity.percent_done or 0
        wait, left = poll_plan(elapsed, percent, previous, interval)
        previous = (elapsed, percent)
        if ahead and left is not None and wait >= left:
            ahead = False
            seen = await _settle_ahead(session_factory, client, sent, activity, wait, report)
            if seen is None:
                return
            activity = seen
            continue
        await asyncio.sleep(wait)
        activity = await client.get_activity(sent.activity_id)
    await _settle(session_factory, sent.batch_id, activity, report, sent.keys, sent.rows)


class _Undo(Exception):
    """Rolls back a settle ahead: the poll did not see a plain success."""

    def __init__(self, activity: Activity) -> None:
        super().__init__(activity.state)
        self.activity = activity


async def _settle_ahead(
    session_factory: SessionFactory,
    client: ConstantContactClient,
    sent: _Sent,
    before: Activity,
    wait: float,
    report: SyncReport,
) -> Activity | None:
    """Poll the import in `wait` seconds, when it should have ended, while its contacts are
    marked synced (from its batch row, at the versions sent, onto its lists) in a
    transaction committed only if that poll sees the activity completed without errors.
    Answers the activity as the poll saw it (`before`, as last seen, when the poll did
    not answer within `SETTLE_AHEAD_POLL_SECONDS` of its time), or None when the batch is
    settled.

    The marking starts `SETTLE_AHEAD_SECONDS_PER_CONTACT` per contact before the poll,
    so it is mostly done when the poll comes back, and the contacts' row locks are held
    about that long (writers of those contacts wait for the commit); a run that dies
    meanwhile leaves the batch started, for the next run to resume."""
    lead = max(SETTLE_AHEAD_MIN_SECONDS, len(sent.keys) * SETTLE_AHEAD_SECONDS_PER_CONTACT)
    lead = min(wait, lead)
    await asyncio.sleep(wait - lead)
    poll = asyncio.create_task(_poll_after(client, sent.activity_id, lead))
    answer_by = asyncio.get_running_loop().time() + lead + SETTLE_AHEAD_POLL_SECONDS
    try:
        async with transaction(session_factory) as session:
            batch = await session.get(SyncBatch, sent.batch_id, with_for_update=True)
            assert batch is not None
            if batch.state != BatchState.STARTED.value:
                return None
            # When the poll should see the end: the time the contacts are synced as of.
            await repository.mark_batch_synced(
                session, sent.batch_id, utcnow() + timedelta(seconds=lead)
            )
            await asyncio.wait([poll], timeout=answer_by - asyncio.get_running_loop().time())
            if not poll.done():
                raise _Undo(before)
            activity = poll.result()
            if activity.state != "completed" or activity.activity_errors:
                raise _Undo(activity)
            batch.state = BatchState.COMPLETED.value
            batch.activity_errors = []
            batch.finished_at = utcnow()
            imported = len(batch.contacts)
        report.imported += imported
        return None
    except _Undo as undo:
        return undo.activity
    finally:
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)


async def _poll_after(client: ConstantContactClient, activity_id: str, delay: float) -> Activity:
    await asyncio.sleep(delay)
    return await client.get_activity(activity_id)


def next_poll_in(
    elapsed: float, percent: int, previous: tuple[float, int] | None, interval: float
) -> float:
    """Seconds until the next poll of an unfinished import (see `poll_plan`)."""
    return poll_plan(elapsed, percent, previous, interval)[0]


def poll_plan(
    elapsed: float, percent: int, previous: tuple[float, int] | None, interval: float
) -> tuple[float, float | None]:
    """Seconds until the next poll of an unfinished import, `elapsed` seconds after its
    acceptance reached us and `percent` done, and the seconds it looks to have left (None
    without progress to go by); `previous` is (elapsed, percent) at the poll before, if
    any. The next poll is expected to see the end when it comes no sooner than that.

    Polls share the request budget with everything else: an early poll costs one more, at
    least `interval` later, and near the end, when the imports finish together and their
    polls share the budget, often a second more. So the poll that should see the end
    goes just after the end that the pace between two polls points to, a quarter of an
    `interval` late at most (the percentages are whole numbers, rounded down: a pace
    measured over a second or more is off by a few hundredths of the time left).
    One poll alone gives only the pace since the acceptance reached us, which comes after
    the platform's clock started (it answers once it has parsed the body, a few tenths of
    a second for a large import): it makes the import look faster than it is, early by
    that delay times the share still to do, and the more the earlier the poll. Such an
    estimate only places a second poll, halfway to the end it points to, from which the
    pace is exact; near the end (within two `interval`s) it is the last, a margin late.
    Early on, rounding down weighs more (1% may be nearly 2%): the second poll goes
    halfway to the earliest end the percentage allows, lest it land after the end.
    With no progress to go by, after as long as it has taken so far (a backoff). At least
    `interval` apart, at most `MAX_POLL_INTERVAL_SECONDS`."""
    left: float | None = None
    if 0 < percent < 100:
        if previous is not None and percent > previous[1] and elapsed > previous[0]:
            pace = (percent - previous[1]) / (elapsed - previous[0])
            left = (100 - percent) / pace
            wait = left + interval / 4
        else:
            left = (100 - percent) / (percent / max(elapsed, 1e-3))
            earliest = (99 - percent) / ((percent + 1) / max(elapsed, 1e-3))
            wait = earliest / 2 if left > 2 * interval else left + interval / 2
    else:
        wait = elapsed
    return min(max(wait, interval), MAX_POLL_INTERVAL_SECONDS), left


_ROW = re.compile(r"\brow\s+(\d+)", re.IGNORECASE)
_EMAIL = re.compile(r"[^\s@<>\"']+@[^\s@<>\"']+\.[^\s@<>\"']+")


async def _settle(
    session_factory: SessionFactory,
    batch_id: int,
    activity: Activity,
    report: SyncReport,
    keys: Sequence[int] | None,
    rows: Sequence[Mapping[str, str]] | None,
) -> None:
    """Record the activity's outcome on the batch and on each of its contacts.

    `keys` and `rows` are the contacts and their rows in the order sent, when known, so
    that errors naming a row or an email land on that contact; otherwise they stay on the
    batch.
    """
    now = utcnow()
    async with transaction(session_factory) as session:
        batch = await session.get(SyncBatch, batch_id, with_for_update=True)
        assert batch is not None
        if batch.state != BatchState.STARTED.value:
            return
        contact_versions = {int(cid): int(v) for cid, v in batch.contacts.items()}
        batch.activity_errors = list(activity.activity_errors)
        batch.finished_at = now
        if activity.state != "completed":
            batch.state = BatchState.FAILED.value
            batch.error = "; ".join(activity.activity_errors) or f"activity {activity.state}"
            # It may have added some before it failed.
            await repository.note_batch_lists(session, batch_id)
            await repository.mark_error_many(session, contact_versions, batch.error)
            report.errors += len(contact_versions)
            return
        batch.state = BatchState.COMPLETED.value
        failed = _failed_contacts(activity.activity_errors, keys or [], rows or [])
        for cid, message in failed.items():
            await repository.mark_error(session, cid, contact_versions[cid], message)
        await repository.note_lists_maybe_added(session, failed, batch.list_ids)
        await repository.mark_batch_synced(session, batch_id, now, excluding=failed)
        report.errors += len(failed)
        report.imported += len(contact_versions) - len(failed)


def _failed_contacts(
    errors: Sequence[str], keys: Sequence[int], rows: Sequence[Mapping[str, str]]
) -> dict[int, str]:
    """Attribute activity errors to contacts by row index or by email, when they say."""
    if not errors:
        return {}
    by_email = {row.get("email", "").lower(): cid for cid, row in zip(keys, rows, strict=True)}
    failed: dict[int, str] = {}
    for message in errors:
        row = _ROW.search(message)
        if row and int(row.group(1)) < len(rows):
            failed[keys[int(row.group(1))]] = message
            continue
        email = _EMAIL.search(message)
        if email and email.group(0).lower() in by_email:
            failed[by_email[email.group(0).lower()]] = message
    return failed
