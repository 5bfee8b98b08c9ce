"""The worker's job timeouts: short, so a killed worker's jobs are soon free to run again,
and a slice's follow-up is enqueued by the worker once the slice's job has finished."""

from __future__ import annotations

from typing import Any

from arq.worker import func

from stripesync.config import Settings
from stripesync.kit.queue import create_redis
from stripesync.kit.slices import continue_later
from stripesync.worker import create_worker


async def test_a_killed_workers_jobs_are_blocked_for_the_job_timeout_plus_10_s_only(
    settings: Settings,
) -> None:
    # arq keeps a started job's in-progress key (no worker may run that id) for the longest
    # timeout of the worker's functions and cron jobs + 10 s; a SIGKILL leaves it behind.
    worker = create_worker(settings, burst=True)
    short = create_worker(settings.model_copy(update={"job_timeout_seconds": 30}), burst=True)
    try:
        assert settings.job_timeout_seconds == 300
        assert worker.in_progress_timeout_s == 310
        assert short.in_progress_timeout_s == 40
        longest = {
            name: f.timeout_s or worker.job_timeout_s
            for name, f in worker.functions.items()
            if (f.timeout_s or worker.job_timeout_s) > 300
        }
        assert longest == {}
        assert {"sync_account", "import_history", "recompute_segments"} <= set(worker.functions)
    finally:
        await worker.close()
        await short.close()


async def sliced(ctx: dict[str, Any], key: str) -> int:
    """A job of three slices: each records its try number and asks for the next."""
    slices = int(await ctx["redis"].rpush(key, ctx["job_try"]))
    if slices < 3:
        continue_later(ctx, "sliced", key)
    return slices


async def test_the_worker_enqueues_a_slices_follow_up_under_its_id_and_not_as_a_retry(
    settings: Settings, redis_url: str
) -> None:
    redis = create_redis(redis_url)
    try:
        await redis.enqueue_job("sliced", "test:slices", _job_id="sliced:1")
        for _ in range(5):  # a burst worker may stop just before a follow-up is queued
            worker = create_worker(
                settings,
                burst=True,
                poll_delay=0.05,
                functions=[func(sliced, name="sliced", max_tries=1)],
                cron_jobs=[],
            )
            try:
                await worker.main()
            finally:
                await worker.close()
            if await redis.llen("test:slices") == 3:
                break
        # Three runs, each its job's first try (max_tries=1 would have refused a retry).
        assert await redis.lrange("test:slices", 0, -1) == [b"1", b"1", b"1"]
        assert not await redis.exists("arq:job:sliced:1")
    finally:
        await redis.aclose()
