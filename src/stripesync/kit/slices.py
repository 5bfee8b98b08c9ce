"""Long work in short jobs: slices that end at a checkpoint and ask for a follow-up.

Every worker job has the same short timeout (`job_timeout_seconds`) because arq marks a
started job in progress for the longest timeout of the worker's functions + 10 s, and the
mark outlives a worker killed mid-job: until it expires, no worker runs that job id and
nobody can enqueue it again. Work that can take longer (an import, a large sync, the
hourly recompute of every account) runs in slices of `SLICE_SHARE` of the timeout; the
rest of the timeout is room for the step in flight when the slice's time is up.

A slice that runs out of time stores its checkpoint, calls `continue_later` and returns
normally; once arq has finished the job (its keys are gone) the worker's `after_job_end`
hook, `enqueue_follow_up`, enqueues the same call again. Returning instead of raising
arq's `Retry` keeps a follow-up from counting as another try of the job. If that enqueue
is lost (the worker dies just then, Redis is down), the feature's sweeper finds the
remaining work in Postgres.
"""

from __future__ import annotations

import time
from typing import Any

import structlog

from stripesync.config import Settings

log = structlog.get_logger(__name__)

SLICE_SHARE = 0.5
_FOLLOW_UP = "stripesync_follow_up"


def slice_deadline(settings: Settings) -> float:
    """The `time.monotonic()` after which a job started now stops at its next checkpoint."""
    return time.monotonic() + settings.job_timeout_seconds * SLICE_SHARE


def continue_later(
    ctx: dict[str, Any], function: str, *args: Any, job_id: str | None = None
) -> None:
    """Ask for `function(*args)` once this job has finished, under `job_id` (by default
    this job's own id, so a coalesced job keeps its one id)."""
    ctx[_FOLLOW_UP] = (function, args, job_id)


def follow_up(ctx: dict[str, Any]) -> tuple[str, tuple[Any, ...], str | None] | None:
    """The follow-up this job asked for, if any."""
    requested: tuple[str, tuple[Any, ...], str | None] | None = ctx.get(_FOLLOW_UP)
    return requested


async def enqueue_follow_up(ctx: dict[str, Any]) -> None:
    """arq `after_job_end` hook: enqueue the follow-up the finished job asked for."""
    requested = ctx.pop(_FOLLOW_UP, None)
    if requested is None:
        return
    function, args, job_id = requested
    job_id = job_id or ctx["job_id"]
    try:
        job = await ctx["redis"].enqueue_job(function, *args, _job_id=job_id)
    except Exception as exc:  # the sweeper finds the remaining work in Postgres
        log.warning("follow_up_enqueue_failed", function=function, error=type(exc).__name__)
        return
    if job is None:
        # Someone enqueued this job id meanwhile (a change, the sweeper): it continues.
        log.info("follow_up_already_queued", function=function, job_id=job_id)
