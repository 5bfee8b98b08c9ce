"""The Redis-backed shared budget."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from stripesync.kit.ratelimit import (
    Budget,
    QuotaExhausted,
    RateLimiter,
    RateLimitTimeout,
    next_utc_midnight,
)
from tests.fakes.constant_contact import max_in_window


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


def _name() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


async def test_concurrent_acquirers_never_get_more_than_the_rate_in_any_second(
    redis: Redis,
) -> None:
    name = _name()
    limiter = RateLimiter(redis, name, per_second=4, margin_seconds=0.0)
    # Each grant's own time, as Redis stamped it in the window: a time taken after the
    # await returns would include however long a busy machine took to resume the task.
    window = f"stripesync:ratelimit:{name}:window"
    grants: dict[object, float] = {}

    async def take() -> None:
        await limiter.acquire()
        for member, stamp in await redis.zrange(window, 0, -1, withscores=True):
            grants[member] = stamp / 1_000_000

    started = time.monotonic()
    await asyncio.gather(*(take() for _ in range(12)))
    assert len(grants) == 12
    assert max_in_window(list(grants.values()), 1.0) <= 4
    # 12 slots at 4 per second: the third group cannot start before 2 s have passed.
    assert time.monotonic() - started >= 1.9


async def test_limiters_with_the_same_name_share_one_budget(redis: Redis, redis_url: str) -> None:
    name = _name()
    other = Redis.from_url(redis_url)
    a = RateLimiter(redis, name, per_second=2, margin_seconds=0.0)
    b = RateLimiter(other, name, per_second=2, margin_seconds=0.0)
    await a.acquire()
    await b.acquire()
    with pytest.raises(RateLimitTimeout):
        await a.acquire(max_wait=0.2)
    await other.aclose()


async def test_waits_are_recorded_in_metrics(redis: Redis) -> None:
    def count() -> float:
        value = REGISTRY.get_sample_value(
            "stripesync_rate_limit_wait_seconds_count", {"api": "waits-test"}
        )
        return value or 0.0

    limiter = RateLimiter(redis, _name(), per_second=1, api="waits-test", margin_seconds=0.0)
    before = count()
    await limiter.acquire()
    waited = await limiter.acquire()
    assert waited >= 0.9
    assert count() == before + 2


async def test_daily_quota_used_up_raises_with_next_utc_midnight(redis: Redis) -> None:
    limiter = RateLimiter(redis, _name(), per_second=100, per_day=3)
    for _ in range(3):
        await limiter.acquire()
    with pytest.raises(QuotaExhausted) as caught:
        await limiter.acquire()
    assert caught.value.retry_at == next_utc_midnight(datetime.now(UTC))
    assert await limiter.used_today() == 3


async def test_exhausting_today_stops_everyone_until_midnight(redis: Redis) -> None:
    limiter = RateLimiter(redis, _name(), per_second=100, per_day=10_000)
    await limiter.acquire()
    retry_at = await limiter.exhaust_today()
    assert retry_at == next_utc_midnight(datetime.now(UTC))
    with pytest.raises(QuotaExhausted):
        await limiter.acquire()


def test_next_utc_midnight_is_the_start_of_the_next_utc_day() -> None:
    late = datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC)
    assert next_utc_midnight(late) == datetime(2026, 3, 2, tzinfo=UTC)
    # 20:00 in New York on 1 March is already 01:00 UTC on 2 March.
    eastern = datetime(2026, 3, 2, 1, 0, tzinfo=UTC).astimezone(ZoneInfo("America/New_York"))
    assert next_utc_midnight(eastern) == datetime(2026, 3, 3, tzinfo=UTC)
    assert next_utc_midnight(datetime(2026, 3, 2, tzinfo=UTC)) - timedelta(days=1) == datetime(
        2026, 3, 2, tzinfo=UTC
    )


def test_budget_below_one_per_second_widens_the_window() -> None:
    assert Budget.from_rate(4) == Budget(4, 1.0)
    assert Budget.from_rate(4.7) == Budget(4, 1.0)
    assert Budget.from_rate(0.5) == Budget(1, 2.0)
    with pytest.raises(ValueError):
        Budget.from_rate(0)


async def test_a_slot_in_flight_counts_until_its_answer_comes_back(redis: Redis) -> None:
    limiter = RateLimiter(redis, _name(), per_second=1, margin_seconds=0.0)
    started = time.monotonic()
    async with limiter.slot(hold_seconds=30):
        await asyncio.sleep(0.5)  # a slow request: the server may have seen it only now
    released = time.monotonic()
    await limiter.acquire()
    # Not 1 s after the grant, but 1 s after the answer.
    assert time.monotonic() - released >= 0.95
    assert time.monotonic() - started >= 1.45


async def test_a_slot_abandoned_by_a_dead_process_frees_after_its_hold(redis: Redis) -> None:
    name = _name()
    limiter = RateLimiter(redis, name, per_second=1, margin_seconds=0.0)
    await limiter._take(hold_seconds=0.3, max_wait=None)  # never released
    started = time.monotonic()
    await limiter.acquire(max_wait=5)
    assert 1.0 <= time.monotonic() - started < 2.0
