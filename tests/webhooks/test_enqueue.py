"""Batched enqueueing stores the very jobs arq's own enqueue_job would, and skips known ids."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis
from arq.constants import default_queue_name, job_key_prefix
from arq.jobs import deserialize_job

from stripesync.kit.queue import PROCESS_EVENT, create_redis, enqueue_event, enqueue_events


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    client = create_redis(redis_url)
    yield client
    await client.flushdb()
    await client.aclose()


async def test_batch_enqueue_stores_the_same_job_as_arq(redis: ArqRedis) -> None:
    assert await enqueue_event(redis, "evt_single")
    assert await enqueue_events(redis, ["evt_a", "evt_b"]) == 2

    single = deserialize_job(await redis.get(job_key_prefix + "evt_single"))
    batched = deserialize_job(await redis.get(job_key_prefix + "evt_a"))
    assert (batched.function, batched.args, batched.kwargs) == (PROCESS_EVENT, ("evt_a",), {})
    assert (single.function, single.kwargs, single.job_try) == (
        batched.function,
        batched.kwargs,
        batched.job_try,
    )
    # Same expiry policy: arq's default extra time, give or take the test's own duration.
    ttls = [await redis.pttl(job_key_prefix + i) for i in ("evt_single", "evt_a")]
    assert abs(ttls[0] - ttls[1]) < 5_000 and ttls[1] > 0
    queued = await redis.zrange(default_queue_name, 0, -1)
    assert sorted(queued) == [b"evt_a", b"evt_b", b"evt_single"]


async def test_batch_enqueue_skips_ids_already_queued_or_finished(redis: ArqRedis) -> None:
    assert await enqueue_event(redis, "evt_queued")
    await redis.set("arq:result:evt_done", b"x")

    added = await enqueue_events(redis, ["evt_queued", "evt_done", "evt_new", "evt_new"])

    assert added == 1
    queued = await redis.zrange(default_queue_name, 0, -1)
    assert sorted(queued) == [b"evt_new", b"evt_queued"]
    assert await enqueue_events(redis, []) == 0
