"""The arq worker: its jobs, cron jobs, and the context every job receives."""

from __future__ import annotations

from typing import Any

import httpx
from arq.cron import cron
from arq.worker import Worker, func

from stripesync.accounts.oauth import IMPORT_HISTORY
from stripesync.accounts.tasks import clean_oauth_states
from stripesync.config import WORKER_REQUIRES, Settings
from stripesync.db import create_engine, create_session_factory
from stripesync.imports.tasks import import_history, sweep_imports
from stripesync.kit.queue import PROCESS_EVENT, create_redis
from stripesync.kit.slices import enqueue_follow_up
from stripesync.optin.tasks import (
    SEND_OPTIN_EMAIL,
    send_optin_email,
    sweep_optin_emails,
    use_queue,
)
from stripesync.segments import automation as segment_automation
from stripesync.segments.tasks import (
    DELIVER_AUTOMATION,
    RECOMPUTE_SEGMENTS,
    deliver_automation,
    recompute_segments,
    recompute_segments_cron,
)
from stripesync.sync.queue import SYNC_ACCOUNT
from stripesync.sync.queue import use_queue as use_sync_queue
from stripesync.sync.tasks import sweep_sync, sync_account_job
from stripesync.webhooks.dispatch import load_handlers
from stripesync.webhooks.reconcile import reconcile_stripe_events
from stripesync.webhooks.tasks import process_event, sweep_events


def create_worker(settings: Settings, *, burst: bool = False, **overrides: Any) -> Worker:
    """Build the worker; `burst=True` processes what is queued and returns (tests, tools)."""
    settings.require(*WORKER_REQUIRES)
    assert settings.redis_url is not None
    load_handlers()
    segment_automation.configure(settings)

    async def startup(ctx: dict[str, Any]) -> None:
        engine = create_engine(settings)
        ctx["settings"] = settings
        ctx["engine"] = engine
        ctx["session_factory"] = create_session_factory(engine)
        ctx["http"] = httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0))
        use_queue(ctx["redis"])  # the opt-in hook enqueues sends after its commits
        use_sync_queue(ctx["redis"])  # the sync hook enqueues account syncs after commits

    async def shutdown(ctx: dict[str, Any]) -> None:
        use_queue(None)
        use_sync_queue(None)
        if "http" in ctx:
            await ctx["http"].aclose()
        if "engine" in ctx:
            await ctx["engine"].dispose()

    # One short timeout for every job and cron job (no per-function timeouts): arq keeps a
    # started job's in-progress key for the longest of them + 10 s, and after a SIGKILL that
    # is how long the job's id stays blocked. Longer work runs in slices (kit/slices.py).
    options: dict[str, Any] = {
        "functions": [
            # keep_result=0: a finished job leaves no result key behind, so the sweeper and
            # replays can enqueue the same job id again; Postgres says whether work remains.
            func(
                process_event,
                name=PROCESS_EVENT,
                max_tries=settings.event_max_attempts + 2,
                keep_result=0,
            ),
            func(recompute_segments, name=RECOMPUTE_SEGMENTS, keep_result=0),
            func(deliver_automation, name=DELIVER_AUTOMATION, keep_result=0),
            # An import pauses at its slice's end and continues in a follow-up job; a crashed
            # one is resumed from its checkpoints by the sweeper once its lease expires.
            func(import_history, name=IMPORT_HISTORY, keep_result=0, max_tries=1),
            func(
                send_optin_email,
                name=SEND_OPTIN_EMAIL,
                max_tries=settings.mail_max_attempts + 2,
                keep_result=0,
            ),
            # One per account at a time (job id sync:<account>); imports poll for a while.
            func(sync_account_job, name=SYNC_ACCOUNT, keep_result=0, max_tries=8),
        ],
        "cron_jobs": [
            cron(sweep_events, second={0}, run_at_startup=True, keep_result=0),
            # Imports: lost enqueues, expired leases (a killed worker), revoked connections,
            # completion emails still due.
            cron(sweep_imports, second={20}, run_at_startup=True, keep_result=0, unique=True),
            # Hourly: time moves people between recent, lapsed and refunded.
            cron(recompute_segments_cron, minute={7}, second={30}, keep_result=0),
            # The outbox sweeper: triggers stored by hooks are posted within seconds.
            cron(deliver_automation, second=set(range(0, 60, 10)), keep_result=0, unique=True),
            # Opt-in emails still unsent (a lost enqueue, a retry that is due) go out.
            cron(sweep_optin_emails, second={5, 35}, run_at_startup=True, keep_result=0),
            # Accounts whose contacts lag their synced version (lost enqueue, crash, quota).
            cron(sweep_sync, second={20}, run_at_startup=True, keep_result=0),
            # Hourly: OAuth states spent or expired over a day ago are deleted.
            cron(clean_oauth_states, minute={47}, second={10}, keep_result=0, unique=True),
            # Events Stripe never delivered (GET /v1/events?delivery_success=false).
            cron(
                reconcile_stripe_events,
                minute=set(range(0, 60, settings.stripe_reconcile_every_minutes)),
                second={40},
                keep_result=0,
                unique=True,
            ),
        ],
        "redis_pool": create_redis(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "after_job_end": enqueue_follow_up,  # a slice that ran out of time goes on
        "burst": burst,
        "handle_signals": not burst,
        "keep_result": 0,
        "allow_abort_jobs": True,  # disconnect aborts a running import (accounts.service)
        "max_jobs": 20,
        "job_timeout": settings.job_timeout_seconds,
        "poll_delay": 0.2,
    }
    options.update(overrides)
    return Worker(**options)
