"""Worker jobs: send one opt-in email, and the sweeper that (re)enqueues every row still
unsent, so an enqueue lost between a commit and Redis loses nothing."""

from __future__ import annotations

from typing import Any

import structlog
from arq.connections import ArqRedis
from arq.worker import Retry

from stripesync.clients.mail import Mailer
from stripesync.config import Settings
from stripesync.optin import service
from stripesync.optin.sending import SendOutcome, due_for_sending, mail_limiter, send_one

log = structlog.get_logger(__name__)

SEND_OPTIN_EMAIL = "send_optin_email"


def send_job_id(optin_email_id: int) -> str:
    return f"optin-email:{optin_email_id}"


async def enqueue_sends(redis: ArqRedis, optin_email_ids: list[int]) -> int:
    """Enqueue one send job per row (job id = row id, so a row is never queued twice)."""
    queued = 0
    for optin_email_id in optin_email_ids:
        job = await redis.enqueue_job(
            SEND_OPTIN_EMAIL, optin_email_id, _job_id=send_job_id(optin_email_id)
        )
        queued += job is not None
    return queued


def use_queue(redis: ArqRedis | None) -> None:
    """Let the contacts hook enqueue send jobs through `redis` after its commits."""
    if redis is None:
        service.configure_enqueue(None)
        return

    async def enqueue(ids: list[int]) -> int:
        return await enqueue_sends(redis, ids)

    service.configure_enqueue(enqueue)


async def send_optin_email(ctx: dict[str, Any], optin_email_id: int) -> str:
    """Job: send the row's email now, or record why not. A transient failure retries the
    job after the backoff stored on the row (the sweeper would find it too)."""
    settings: Settings = ctx["settings"]
    result = await send_one(
        ctx["session_factory"],
        settings,
        Mailer(settings),
        mail_limiter(ctx["redis"], settings),
        optin_email_id,
    )
    if result.outcome == SendOutcome.RETRY and result.retry_in is not None:
        raise Retry(defer=result.retry_in)
    return result.outcome.value


async def sweep_optin_emails(ctx: dict[str, Any]) -> int:
    """Cron: enqueue the send of every due, unsent opt-in email."""
    ids = await due_for_sending(ctx["session_factory"], ctx["settings"])
    if not ids:
        return 0
    queued = await enqueue_sends(ctx["redis"], ids)
    if queued:
        log.info("optin_emails_swept", queued=queued)
    return queued
