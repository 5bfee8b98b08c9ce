"""arq jobs of the historical import: running it, and the sweeper cron."""

from __future__ import annotations

from typing import Any

import structlog

from stripesync.accounts.oauth import IMPORT_HISTORY
from stripesync.db import transaction
from stripesync.imports import notify, service
from stripesync.imports.runner import Deps, run_job
from stripesync.kit.slices import continue_later, slice_deadline

log = structlog.get_logger(__name__)


def _deps(ctx: dict[str, Any]) -> Deps:
    return Deps(
        session_factory=ctx["session_factory"],
        http=ctx["http"],
        redis=ctx["redis"],
        settings=ctx["settings"],
    )


async def import_history(ctx: dict[str, Any], account_id: str) -> dict[str, str]:
    """Run the account's active import job(s) until none is left to run, or for one slice.

    Enqueued after the OAuth callback and on resync (job name `import_history`); safe to
    run twice: the job's lease in Postgres admits one runner at a time. An import still
    running when the slice's time is up pauses after its page (lease and attempt given
    back) and goes on in a follow-up job; the sweeper resumes it if that one is lost."""
    deps = _deps(ctx)
    stop_at = slice_deadline(deps.settings)
    outcomes: dict[str, str] = {}
    while True:
        async with transaction(deps.session_factory) as session:
            job_ids = [j for j in await service.runnable_job_ids(session, account_id)]
        job_ids = [j for j in job_ids if j not in outcomes]
        if not job_ids:
            break
        for job_id in job_ids:
            outcomes[job_id] = await run_job(deps, job_id, stop_at=stop_at)
            if outcomes[job_id] == "paused":
                continue_later(ctx, IMPORT_HISTORY, account_id)
                return outcomes
            if outcomes[job_id] in ("succeeded", "failed"):
                await notify.send_completion(deps.session_factory, deps.settings, job_id)
    return outcomes


async def sweep_imports(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: cancel, create, resume and notify what Postgres says is due (service.sweep)."""
    return await service.sweep(ctx["session_factory"], ctx["redis"], ctx["settings"])
