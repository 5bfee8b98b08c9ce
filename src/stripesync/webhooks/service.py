"""Receiving Stripe events: parse, store durably (batched commits), then enqueue."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from stripesync.kit.queue import enqueue_events

log = structlog.get_logger(__name__)


class InvalidEventError(ValueError):
    """The body is not JSON or not a Stripe event."""


@dataclass(frozen=True, slots=True)
class ParsedEvent:
    id: str
    type: str
    account: str | None
    livemode: bool
    api_version: str | None
    created: int
    payload_json: str


def _str_field(data: dict[str, Any], key: str, *, required: bool, max_len: int = 255) -> str | None:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len or not value.isprintable():
        raise InvalidEventError(f"event field {key!r} must be a non-empty printable string")
    return value


# JSON escapes Postgres refuses in JSONB: NUL, and UTF-16 surrogates (lone ones are invalid;
# pairs are fine but cheap to re-encode along with them).
_UNSTORABLE_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


def _storable(value: Any) -> Any:
    """`value` with NUL characters dropped and lone surrogates replaced, recursively."""
    if isinstance(value, str):
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_storable(k): _storable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_storable(v) for v in value]
    return value


def parse_event(body: bytes) -> ParsedEvent:
    """Read the envelope fields we index; the whole body is kept as the payload."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise InvalidEventError("body is not JSON") from None
    if not isinstance(data, dict) or data.get("object") != "event":
        raise InvalidEventError("body is not a Stripe event")
    created = data.get("created")
    livemode = data.get("livemode")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 <= created < 2**40:
        raise InvalidEventError("event field 'created' must be a unix timestamp")
    if not isinstance(livemode, bool):
        raise InvalidEventError("event field 'livemode' must be a boolean")
    inner = data.get("data")
    if not isinstance(inner, dict) or not isinstance(inner.get("object"), dict):
        raise InvalidEventError("event has no data.object")
    payload_json = body.decode()
    if _UNSTORABLE_ESCAPE.search(payload_json):
        # Stored as close to the original as Postgres allows: one unstorable character must
        # not fail the batch it shares a commit with (every request in it would get a 503).
        payload_json = json.dumps(_storable(data), ensure_ascii=False)
    return ParsedEvent(
        id=_str_field(data, "id", required=True) or "",
        type=_str_field(data, "type", required=True) or "",
        account=_str_field(data, "account", required=False),
        livemode=livemode,
        api_version=_str_field(data, "api_version", required=False, max_len=64),
        created=created,
        payload_json=payload_json,
    )


_INSERT_EVENTS = text(
    """
    INSERT INTO stripe_events (id, type, account, livemode, api_version, created, payload)
    SELECT u.id, u.type, u.account, u.livemode, u.api_version,
           to_timestamp(u.created), u.payload::jsonb
    FROM unnest(CAST(:ids AS text[]), CAST(:types AS text[]), CAST(:accounts AS text[]),
                CAST(:livemodes AS boolean[]), CAST(:api_versions AS text[]),
                CAST(:createds AS bigint[]), CAST(:payloads AS text[]))
         AS u(id, type, account, livemode, api_version, created, payload)
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """
)


class EventInbox:
    """Stores events with `INSERT ... ON CONFLICT DO NOTHING`, many requests per commit.

    Each request waits for the commit that holds its event, so a 2xx always means durable.
    Requests that arrive while a commit is in flight share the next one: under load this
    turns N commits into one, and alone a request waits for nothing but its own commit.
    """

    # Commits wait on the disk (fsync), not on the CPU: several writers keep several commits
    # in flight, which Postgres flushes together. 8 measured best in bench/ingest.py.
    def __init__(self, engine: AsyncEngine, *, max_batch: int = 500, writers: int = 8) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._writers = writers
        self._queue: asyncio.Queue[tuple[ParsedEvent, asyncio.Future[bool]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._write_loop()) for _ in range(self._writers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(ConnectionError("shutting down"))

    async def store(self, event: ParsedEvent) -> bool:
        """Store one event durably; True when it is new, False for a duplicate delivery."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((event, future))
        return await future

    async def _write_loop(self) -> None:
        # Each writer keeps its connection between batches: no pool checkout and no
        # pre-ping round trip per commit. A connection that failed is dropped.
        conn: AsyncConnection | None = None
        try:
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self._max_batch and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                events = [event for event, _ in batch]
                try:
                    conn, new_ids = await self._insert_on(conn, events)
                except Exception as exc:  # every waiter learns the write failed
                    conn = None
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for event, future in batch:
                    # Only the first copy of an id in a batch counts as new.
                    is_new = event.id in new_ids
                    new_ids.discard(event.id)
                    if not future.done():
                        future.set_result(is_new)
        finally:
            if conn is not None:
                await conn.close()

    async def _insert_on(
        self, conn: AsyncConnection | None, events: list[ParsedEvent]
    ) -> tuple[AsyncConnection, set[str]]:
        """Insert on `conn` (or a new connection); retried once when a kept one went stale."""
        reused = conn is not None
        if conn is None:
            conn = await self._engine.connect()
        try:
            return conn, await self._insert(conn, events)
        except Exception as exc:
            await _discard(conn)
            stale = isinstance(exc, DBAPIError) and exc.connection_invalidated
            if not (reused and stale):
                raise
        # The kept connection died while idle (e.g. Postgres restarted): one fresh try.
        conn = await self._engine.connect()
        try:
            return conn, await self._insert(conn, events)
        except Exception:
            await _discard(conn)
            raise

    async def _insert(self, conn: AsyncConnection, events: list[ParsedEvent]) -> set[str]:
        async with conn.begin():
            return await insert_events(conn, events)


async def insert_events(conn: AsyncConnection, events: list[ParsedEvent]) -> set[str]:
    """`INSERT ... ON CONFLICT (id) DO NOTHING` of these events in the caller's transaction;
    answers the ids that were new. The one write path of the inbox (endpoint, reconciler)."""
    params = {
        "ids": [e.id for e in events],
        "types": [e.type for e in events],
        "accounts": [e.account for e in events],
        "livemodes": [e.livemode for e in events],
        "api_versions": [e.api_version for e in events],
        "createds": [e.created for e in events],
        "payloads": [e.payload_json for e in events],
    }
    result = await conn.execute(_INSERT_EVENTS, params)
    return {row[0] for row in result}


async def _discard(conn: AsyncConnection) -> None:
    try:
        await conn.invalidate()
        await conn.close()
    except Exception as exc:  # already broken; the pool forgets it either way
        log.debug("inbox_connection_discard_failed", error=type(exc).__name__)


class Enqueuer:
    """Enqueues stored events after their commit, in the background, many per round trip.

    While one batch is on its way to Redis the next ids gather, so under load one Lua call
    carries many jobs and alone an event waits for nothing. A failure here loses nothing:
    the events are in Postgres and the sweeper enqueues them.
    """

    def __init__(self, redis: Any, *, max_batch: int = 500) -> None:
        self._redis = redis
        self._max_batch = max_batch
        self._pending: list[str] = []
        self._flusher: asyncio.Task[None] | None = None

    def schedule(self, event_id: str) -> None:
        self._pending.append(event_id)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await enqueue_events(self._redis, batch)
            except Exception as exc:
                log.warning("enqueue_failed", events=len(batch), error=type(exc).__name__)

    async def drain(self) -> None:
        """Wait until every scheduled event has been offered to Redis."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)
