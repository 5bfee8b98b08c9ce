"""The worker: process each stored event once, retry failures, sweep up what was missed."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq import Retry
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.embedded import EmbeddedRedis
from stripesync.kit.clock import utcnow
from stripesync.models import Account, StripeConnection, StripeEvent
from stripesync.webhooks.dispatch import handles
from stripesync.webhooks.tasks import process_event, sweep_events
from tests.conftest import TEST_VAR, make_settings, run_worker_burst
from tests.support import deliver, stripe_event

APPLIED: list[str] = []


@handles("test.recorded")
async def _record(session: AsyncSession, event: StripeEvent, connection: StripeConnection) -> None:
    APPLIED.append(event.id)


@handles("test.failing")
async def _fail(session: AsyncSession, event: StripeEvent, connection: StripeConnection) -> None:
    raise RuntimeError("platform exploded")


@pytest.fixture(autouse=True)
def _reset_applied() -> None:
    APPLIED.clear()


async def connect(
    factory: SessionFactory, stripe_account: str = "acct_test_1", *, livemode: bool = False
) -> None:
    async with transaction(factory) as session:
        session.add(Account(id="acc_1", name="Blue Fern", owner_email="owner@bluefern.example"))
        await session.flush()
        session.add(
            StripeConnection(
                account_id="acc_1",
                stripe_account_id=stripe_account,
                livemode=livemode,
                mode="direct",
            )
        )


async def stored(factory: SessionFactory, event_id: str) -> StripeEvent:
    async with factory() as session:
        event = await session.get(StripeEvent, event_id)
    assert event is not None
    return event


async def test_worker_in_burst_mode_processes_stored_events_end_to_end(
    app_client: httpx.AsyncClient, settings: Settings, session_factory: SessionFactory
) -> None:
    await connect(session_factory)
    events = [stripe_event("test.recorded") for _ in range(5)]
    for event in events:
        assert (await deliver(app_client, event)).status_code == 200
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]

    await run_worker_burst(settings)

    assert sorted(APPLIED) == sorted(e["id"] for e in events)
    for event in events:
        row = await stored(session_factory, event["id"])
        assert row.state == "processed" and row.processed_at is not None
    async with session_factory() as session:
        connection = (await session.scalars(select(StripeConnection))).one()
    assert connection.last_event_at is not None


async def test_event_is_applied_once_however_often_it_is_processed(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, app_client: httpx.AsyncClient
) -> None:
    await connect(session_factory)
    event = stripe_event("test.recorded")
    await deliver(app_client, event)
    results = await asyncio.gather(*(process_event(worker_ctx, event["id"]) for _ in range(10)))
    assert [event["id"]] == APPLIED
    assert results.count("processed") >= 1
    assert set(results) <= {"processed", "missing_or_busy"}


@pytest.mark.parametrize(
    ("event", "reason"),
    [
        (stripe_event("test.recorded", account="acct_unknown"), "unknown_account"),
        (stripe_event("test.recorded", account=None), "no_account"),
        (stripe_event("test.recorded", livemode=True), "livemode_mismatch"),
        (stripe_event("balance.available"), "unused_type"),
    ],
)
async def test_events_we_cannot_use_are_ignored_with_a_reason(
    worker_ctx: dict[str, Any],
    session_factory: SessionFactory,
    app_client: httpx.AsyncClient,
    event: dict[str, Any],
    reason: str,
) -> None:
    await connect(session_factory)
    await deliver(app_client, event)
    assert await process_event(worker_ctx, event["id"]) == "ignored"
    row = await stored(session_factory, event["id"])
    assert (row.state, row.ignored_reason) == ("ignored", reason)
    assert APPLIED == []


async def test_revoked_connection_ignores_later_events(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, app_client: httpx.AsyncClient
) -> None:
    await connect(session_factory)
    async with transaction(session_factory) as session:
        await session.execute(update(StripeConnection).values(status="revoked"))
    event = stripe_event("test.recorded")
    await deliver(app_client, event)
    assert await process_event(worker_ctx, event["id"]) == "ignored"
    assert APPLIED == []


async def test_failures_retry_with_backoff_then_end_failed(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, app_client: httpx.AsyncClient
) -> None:
    await connect(session_factory)
    event = stripe_event("test.failing")
    await deliver(app_client, event)
    max_attempts = worker_ctx["settings"].event_max_attempts
    for attempt in range(1, max_attempts):
        with pytest.raises(Retry):
            await process_event(worker_ctx, event["id"])
        row = await stored(session_factory, event["id"])
        assert (row.state, row.attempts) == ("retrying", attempt)
        assert row.last_error == "RuntimeError: platform exploded"
        assert row.next_attempt_at is not None and row.next_attempt_at > row.received_at
    assert await process_event(worker_ctx, event["id"]) == "failed"
    row = await stored(session_factory, event["id"])
    assert (row.state, row.attempts) == ("failed", max_attempts)
    # A failed event stays failed: processing it again does nothing until replayed.
    assert await process_event(worker_ctx, event["id"]) == "failed"


async def test_sweeper_enqueues_only_events_left_unprocessed_past_the_grace(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, app_client: httpx.AsyncClient
) -> None:
    await connect(session_factory)
    old, fresh, done = (stripe_event("test.recorded") for _ in range(3))
    for event in (old, fresh, done):
        await deliver(app_client, event)
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    redis = worker_ctx["redis"]
    await redis.flushdb()  # as if Redis lost its data
    async with transaction(session_factory) as session:
        await session.execute(
            update(StripeEvent)
            .where(StripeEvent.id.in_([old["id"], done["id"]]))
            .values(received_at=utcnow() - timedelta(seconds=120))
        )
        await session.execute(
            update(StripeEvent).where(StripeEvent.id == done["id"]).values(state="processed")
        )
    assert await sweep_events(worker_ctx) == 1
    assert await redis.zrange("arq:queue", 0, -1) == [old["id"].encode()]
    # Sweeping again does not queue it twice.
    await sweep_events(worker_ctx)
    assert await redis.zcard("arq:queue") == 1


async def test_redis_down_still_acknowledges_and_sweeper_recovers_every_event(
    database_url: str, session_factory: SessionFactory, engine: Any
) -> None:
    from stripesync.app import create_app

    redis_server = EmbeddedRedis(TEST_VAR / "redis-outage").start()
    settings = make_settings(database_url, redis_server.url, sweeper_grace_seconds=0)
    try:
        await connect(session_factory)
        app = create_app(settings)
        events = [stripe_event("test.recorded") for _ in range(8)]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                redis_server.stop()
                responses = [await deliver(client, e) for e in events]
                await app.state.enqueuer.drain()
                assert (await client.get("/readyz")).status_code == 503
        assert [r.status_code for r in responses] == [200] * len(events)

        redis_server.start()  # back, with nothing in it
        from stripesync.worker import create_worker

        worker = create_worker(settings, burst=True, poll_delay=0.05)
        try:
            await worker.main()  # its startup cron runs the sweeper, then drains the queue
        finally:
            await worker.close()
        for event in events:
            assert (await stored(session_factory, event["id"])).state == "processed"
        assert sorted(APPLIED) == sorted(e["id"] for e in events)
    finally:
        redis_server.stop()
