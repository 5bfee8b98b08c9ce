"""Worker jobs of the webhook inbox: process one event, sweep up what was missed."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import structlog
from arq import Retry

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import metrics
from stripesync.kit.clock import utcnow
from stripesync.kit.queue import enqueue_event
from stripesync.models import PENDING_STATES, EventState, StripeEvent
from stripesync.webhooks import repository
from stripesync.webhooks.dispatch import handler_for

log = structlog.get_logger(__name__)

SWEEP_BATCH = 1000


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """Exponential backoff with ±20% jitter, capped at one hour."""
    base = min(settings.event_retry_base_seconds * 2 ** max(attempts - 1, 0), 3600.0)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


async def apply_event(session: Any, event: StripeEvent) -> EventState:
    """Run the event's handler in the caller's transaction and settle its state.

    An event changes nothing (and becomes `ignored`) when its type is unused, it has no
    account, its account is unknown or disconnected, or its livemode differs from the
    connection's: a test event never touches live data.
    """
    now = utcnow()
    handler = handler_for(event.type)
    connection = (
        await repository.active_connection(session, event.account) if event.account else None
    )
    reason: str | None = None
    if handler is None:
        reason = "unused_type"
    elif event.account is None:
        reason = "no_account"
    elif connection is None:
        reason = "unknown_account"
    elif connection.livemode != event.livemode:
        reason = "livemode_mismatch"

    if connection is not None and connection.livemode == event.livemode:
        connection.last_event_at = now
        # Written now, before the handler reads anything: the connection's row lock then
        # applies one event of the account at a time. Two at once (a customer and its
        # first payment arrive together) would each miss the other's uncommitted row.
        await session.flush()
    if reason is not None:
        event.state = EventState.IGNORED
        event.ignored_reason = reason
    else:
        assert handler is not None and connection is not None
        await handler(session, event, connection)
        event.state = EventState.PROCESSED
    event.processed_at = now
    event.next_attempt_at = None
    return EventState(event.state)


async def process_event(ctx: dict[str, Any], event_id: str) -> str:
    """Apply one stored event exactly once: its effects and its `processed` mark commit together."""
    factory: SessionFactory = ctx["session_factory"]
    settings: Settings = ctx["settings"]
    try:
        async with transaction(factory) as session:
            event = await repository.lock_event(session, event_id)
            if event is None:
                return "missing_or_busy"
            if event.state not in PENDING_STATES:
                return event.state
            outcome = await apply_event(session, event)
            created = event.created
    except Exception as exc:
        return await _fail(factory, settings, event_id, exc)
    metrics.EVENTS_PROCESSED.labels(outcome=outcome.value).inc()
    metrics.EVENT_LAG.observe(max((utcnow() - created).total_seconds(), 0.0))
    return outcome.value


async def _fail(factory: SessionFactory, settings: Settings, event_id: str, exc: Exception) -> str:
    error = f"{type(exc).__name__}: {exc}"
    async with transaction(factory) as session:
        event = await repository.record_failure(
            session,
            event_id,
            error,
            now=utcnow(),
            max_attempts=settings.event_max_attempts,
            backoff=lambda attempts: retry_delay(settings, attempts),
        )
        state = event.state if event else "missing"
        tries = event.attempts if event else 0
        next_at = event.next_attempt_at if event else None
    log.warning("event_failed", event_id=event_id, attempts=tries, state=state, error=error[:300])
    metrics.EVENTS_PROCESSED.labels(outcome="error").inc()
    if state == EventState.RETRYING and next_at is not None:
        raise Retry(defer=max(next_at - utcnow(), timedelta(0))) from exc
    return str(state)


async def sweep_events(ctx: dict[str, Any]) -> int:
    """Enqueue events stored but not processed: covers Redis outages and crashes between
    commit and enqueue. Enqueueing an event that is already queued is a no-op (job id)."""
    factory: SessionFactory = ctx["session_factory"]
    settings: Settings = ctx["settings"]
    grace = timedelta(seconds=settings.sweeper_grace_seconds)
    total = 0
    now = utcnow()
    after = None
    while True:
        async with transaction(factory) as session:
            rows = await repository.due_events(
                session, now=now, grace=grace, limit=SWEEP_BATCH, after=after
            )
        for _, event_id in rows:
            await enqueue_event(ctx["redis"], event_id)
        total += len(rows)
        if len(rows) < SWEEP_BATCH:
            break
        after = rows[-1]
    if total:
        log.info("swept_events", count=total)
    return total
