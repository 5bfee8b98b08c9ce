"""The arq queue: one Redis client factory and the names of the jobs we enqueue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job
from arq.utils import timestamp_ms

PROCESS_EVENT = "process_event"


def create_redis(url: str) -> ArqRedis:
    """An arq Redis client that does not connect until first used.

    Short timeouts: when Redis is down, callers learn it in seconds and carry on
    (events are already in Postgres; the sweeper enqueues them later).
    """
    client: ArqRedis = ArqRedis.from_url(
        url, socket_connect_timeout=2, socket_timeout=5, health_check_interval=30
    )
    return client


async def enqueue_event(redis: ArqRedis, event_id: str, **kwargs: Any) -> bool:
    """Enqueue `process_event` with the event id as job id; False when already queued."""
    job = await redis.enqueue_job(PROCESS_EVENT, event_id, _job_id=event_id, **kwargs)
    return job is not None


# Per id, atomically: skip it when its job or result key exists (as arq's enqueue_job does
# with WATCH/MULTI), else store the job and add it to the queue. One round trip per batch.
# ARGV: job key prefix, result key prefix, queue, expiry ms, score, then id/job pairs.
_ENQUEUE_MANY = """
local added = 0
for i = 6, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('exists', ARGV[1] .. id, ARGV[2] .. id) == 0 then
    redis.call('psetex', ARGV[1] .. id, ARGV[4], ARGV[i + 1])
    redis.call('zadd', ARGV[3], ARGV[5], id)
    added = added + 1
  end
end
return added
"""


async def enqueue_events(redis: ArqRedis, event_ids: Sequence[str]) -> int:
    """Enqueue `process_event` for many events in one round trip; returns how many were new.

    Each job is exactly what `enqueue_event` would store (same key, payload, expiry and
    score), and an id whose job is already queued or running is skipped, as arq does.
    """
    if not event_ids:
        return 0
    now_ms = timestamp_ms()
    argv: list[Any] = [
        job_key_prefix,
        result_key_prefix,
        redis.default_queue_name,
        redis.expires_extra_ms,
        now_ms,
    ]
    for event_id in event_ids:
        job = serialize_job(
            PROCESS_EVENT, (event_id,), {}, None, now_ms, serializer=redis.job_serializer
        )
        argv += [event_id, job]
    added = await redis.eval(_ENQUEUE_MANY, 0, *argv)  # type: ignore[misc]
    return int(added)
