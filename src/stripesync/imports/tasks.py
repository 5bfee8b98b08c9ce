"""arq jobs of the historical import: running it, and the sweeper cron."""

from __future__ import annotations

from typing import Any

import structlog

from stripesync.db import transaction
from stripesync.imports import notify, service
from stripesync.imports.runner import Deps, run_job

log = structlog.get_logger(__name__)


def _deps(ctx: dict[str, Any]) -> Deps:
    return Deps(
        session_factory=ctx["session_factory"],
        http=ctx["http"],
        redis=ctx["redis"],
        settings=ctx["settings"],
    )


async def import_history(ctx: dict[str, Any], account_id: str) -> dict[str, str]:
    """Run the account's active import job(s) until none is left to run.

    Enqueued after the OAuth callback and on resync (job name `import_history`); safe to
    run twice: the job's lease in Postgres admits one runner at a time."""
    deps = _deps(ctx)
    outcomes: dict[str, str] = {}
    while True:
        async with transaction(deps.session_factory) as session:
            job_ids = [j for j in await service.runnable_job_ids(session, account_id)]
        job_ids = [j for j in job_ids if j not in outcomes]
        if not job_ids:
            break
        for job_id in job_ids:
            outcomes[job_id] = await run_job(deps, job_id)
            if outcomes[job_id] in ("succeeded", "failed"):
                await notify.send_completion(deps.session_factory, deps.settings, job_id)
    return outcomes


async def sweep_imports(ctx: dict[str, Any]) -> dict[str, int]:
    """Cron: cancel, create, resume and notify what Postgres says is due (service.sweep)."""
    return await service.sweep(ctx["session_factory"], ctx["redis"], ctx["settings"])
