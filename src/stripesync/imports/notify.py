"""The completion email to the account owner: once per job, also when the job failed.

Guarded in Postgres: a job that ends is marked `notice_state = pending`; a sender claims it
(`pending → sending`) in a committed transaction before talking to the mail server, so two
senders never both send it. A transient failure puts it back to `pending` (the sweeper
tries again); a crash mid-send leaves it `sending`: possibly lost, never doubled.
"""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from pathlib import Path
from typing import Any

import structlog
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from stripesync.clients.mail import Mailer, PermanentMailError, TransientMailError
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.imports import repository
from stripesync.models import Account, ConnectionMode, Job, JobState, NoticeState, StripeConnection

log = structlog.get_logger(__name__)

MAX_NOTICE_ATTEMPTS = 8
_TEMPLATES = Path(__file__).parent / "templates"
_html = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
)
_text = Environment(
    loader=FileSystemLoader(_TEMPLATES),
    autoescape=False,  # noqa: S701 - the text/plain part: no markup to escape into
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)


def completion_values(job: Job, account: Account, mode: str | None) -> dict[str, Any]:
    report = job.report or {}
    skipped = sorted((report.get("skipped") or {}).items())
    return {
        "succeeded": job.state == JobState.SUCCEEDED,
        "merchant_name": account.name,
        "job_id": job.id,
        "error": job.error or "an unexpected error",
        "objects_read": sum((report.get("imported") or {}).values()),
        "contacts_created": report.get("contacts_created", 0),
        "already_contact": report.get("already_contact", 0),
        "optin_emails": report.get("optin_emails", 0),
        "optin": mode == ConnectionMode.OPTIN,
        "skipped": skipped,
        "skipped_total": sum(count for _, count in skipped),
    }


def render_completion(
    settings: Settings, job: Job, account: Account, mode: str | None
) -> EmailMessage:
    values = completion_values(job, account, mode)
    message = EmailMessage()
    if values["succeeded"]:
        message["Subject"] = "Your Stripe customers are imported"
    else:
        message["Subject"] = "Your Stripe import did not finish: what to do"
    message["From"] = formataddr(("stripesync", settings.mail_from))
    message["To"] = account.owner_email
    message["Message-ID"] = make_msgid(domain=settings.mail_from.rpartition("@")[2] or None)
    message.set_content(_text.get_template("completion.txt").render(**values))
    message.add_alternative(_html.get_template("completion.html").render(**values), subtype="html")
    return message


async def send_completion(session_factory: SessionFactory, settings: Settings, job_id: str) -> str:
    """Send the job's completion email if it is due and unclaimed; answers the outcome."""
    async with transaction(session_factory) as session:
        job = await repository.claim_notice(session, job_id)
        if job is None:
            return "not_due"
        account = await session.get(Account, job.account_id)
        connection = (
            await session.get(StripeConnection, job.connection_id) if job.connection_id else None
        )
    if account is None:
        return "no_account"
    message = render_completion(settings, job, account, connection.mode if connection else None)
    outcome = NoticeState.SENT
    try:
        await Mailer(settings).send(message, account.owner_email)
    except TransientMailError as exc:
        retry = job.notice_attempts < MAX_NOTICE_ATTEMPTS
        outcome = NoticeState.PENDING if retry else NoticeState.FAILED
        log.warning("import_notice_deferred", job_id=job_id, error=str(exc))
    except PermanentMailError as exc:
        outcome = NoticeState.FAILED
        log.warning("import_notice_refused", job_id=job_id, error=str(exc))
    async with transaction(session_factory) as session:
        await repository.set_notice(session, job_id, outcome)
    if outcome == NoticeState.SENT:
        log.info("import_notice_sent", job_id=job_id, account_id=job.account_id)
    return str(outcome)
