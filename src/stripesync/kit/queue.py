"""The arq queue: one Redis client factory and the names of the jobs we enqueue."""

from __future__ import annotations

from typing import Any

from arq.connections import ArqRedis

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
