"""Sending one opt-in email: claim the row, render, throttle, hand it to the mail server,
record the outcome. Safe to run twice: only a `queued`, due row is ever claimed, under a
row lock, and a claimed row is `sending` until its outcome is recorded.

- accepted → `sent` (the link works for `optin_token_days` from now);
- a transient failure (4xx, connection trouble) → back to `queued` with a backoff; after
  `mail_max_attempts` → `failed`;
- a permanent rejection (5xx) → `rejected`, recorded with the reply, never retried.
The contact stays `pending` in every case: no email reached an answer, and the person is
never asked twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta

import structlog
from redis.asyncio import Redis

from stripesync.clients.mail import Mailer, MailError, PermanentMailError
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import RateLimiter
from stripesync.models import ConsentState, Contact, OptinEmail, OptinEmailState
from stripesync.optin import repository, service
from stripesync.optin.metrics import OPTIN_EMAILS
from stripesync.optin.rendering import EmailContent, build_message, render_email

log = structlog.get_logger(__name__)


def stale_claim(settings: Settings) -> timedelta:
    """A `sending` claim older than this belonged to a worker that died mid-send: arq
    cancels a send job at the job timeout, so no live job holds a claim that long."""
    return timedelta(seconds=settings.job_timeout_seconds + 10)


class SendOutcome(enum.StrEnum):
    SKIPPED = "skipped"  # not due, taken by another job, or nothing to do
    SENT = "sent"
    RETRY = "retry"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class SendResult:
    outcome: SendOutcome
    retry_in: float | None = None


def mail_limiter(redis: Redis, settings: Settings) -> RateLimiter:
    """The outgoing-mail budget, shared by every worker through Redis."""
    return RateLimiter(redis, "mail", per_second=settings.mail_per_second, api="mail")


@dataclass(frozen=True)
class _Claimed:
    optin_email_id: int
    account_id: str
    recipient: str
    content: EmailContent
    token: str
    attempt: int


async def _claim(factory: SessionFactory, optin_email_id: int) -> _Claimed | SendResult:
    async with transaction(factory) as session:
        now = utcnow()
        row = await repository.claim_for_sending(session, optin_email_id, now)
        if row is None:
            return SendResult(SendOutcome.SKIPPED)
        if not await repository.optin_mode_active(session, row.account_id):
            return SendResult(SendOutcome.SKIPPED)  # disconnected: waits for a reconnect
        contact = await session.get(Contact, row.contact_id) if row.contact_id is not None else None
        if contact is None or contact.consent_state != ConsentState.PENDING:
            # Erased, or the person decided meanwhile (checkout consent, unsubscribe).
            row.state = OptinEmailState.CANCELLED
            return SendResult(SendOutcome.CANCELLED)
        content = await service.current_content(session, row.account_id)
        token, digest = service.new_token()
        row.version_id = await repository.version_for(session, row.account_id, content)
        row.token_hash = digest
        row.state = OptinEmailState.SENDING
        row.claimed_at = now
        row.attempts = row.attempts + 1
        return _Claimed(row.id, row.account_id, contact.email, content, token, row.attempts)


async def send_one(
    factory: SessionFactory,
    settings: Settings,
    mailer: Mailer,
    limiter: RateLimiter | None,
    optin_email_id: int,
) -> SendResult:
    claimed = await _claim(factory, optin_email_id)
    if isinstance(claimed, SendResult):
        return claimed
    confirm_url, decline_url = service.links(settings.public_base_url, claimed.token)
    rendered = render_email(claimed.content, confirm_url=confirm_url, decline_url=decline_url)
    message = build_message(
        claimed.content,
        rendered,
        recipient=claimed.recipient,
        unsubscribe_url=confirm_url.split("?", 1)[0] + "/decline",
        envelope_from=settings.mail_from,
    )
    error: MailError | None = None
    try:
        if limiter is not None:
            await limiter.acquire()
        await mailer.send(message, claimed.recipient)
    except MailError as exc:
        error = exc
    return await _record(factory, settings, claimed, str(message["Message-ID"]), error)


async def _record(
    factory: SessionFactory,
    settings: Settings,
    claimed: _Claimed,
    message_id: str,
    error: MailError | None,
) -> SendResult:
    async with transaction(factory) as session:
        row = await session.get(OptinEmail, claimed.optin_email_id, with_for_update=True)
        if row is None:
            return SendResult(SendOutcome.SKIPPED)
        now = utcnow()
        row.claimed_at = None
        ids = {"account_id": claimed.account_id, "optin_email_id": row.id}
        if error is None:
            row.state = OptinEmailState.SENT
            row.sent_at = now
            row.expires_at = service.expiry(now, settings.optin_token_days)
            row.message_id = message_id[:255]
            row.last_error = None
            OPTIN_EMAILS.labels("sent").inc()
            log.info("optin_email_sent", **ids, attempt=claimed.attempt)
            return SendResult(SendOutcome.SENT)
        row.last_error = str(error)[:500]
        row.token_hash = None  # that link never reached anyone
        if isinstance(error, PermanentMailError):
            row.state = OptinEmailState.REJECTED
            OPTIN_EMAILS.labels("rejected").inc()
            log.warning("optin_email_rejected", **ids, code=error.code)
            return SendResult(SendOutcome.REJECTED)
        if row.attempts >= settings.mail_max_attempts:
            row.state = OptinEmailState.FAILED
            OPTIN_EMAILS.labels("failed").inc()
            log.warning("optin_email_failed", **ids, attempts=row.attempts, code=error.code)
            return SendResult(SendOutcome.FAILED)
        delay = settings.mail_retry_base_seconds * 2 ** (row.attempts - 1)
        row.state = OptinEmailState.QUEUED
        row.next_attempt_at = now + timedelta(seconds=delay)
        OPTIN_EMAILS.labels("transient_failure").inc()
        log.info("optin_email_retry", **ids, attempt=row.attempts, code=error.code, delay=delay)
        return SendResult(SendOutcome.RETRY, retry_in=delay)


async def due_for_sending(factory: SessionFactory, settings: Settings) -> list[int]:
    """Ids of rows to (re)send now; stale `sending` claims are released first."""
    async with transaction(factory) as session:
        now = utcnow()
        return await repository.due_ids(session, now, stale_before=now - stale_claim(settings))
