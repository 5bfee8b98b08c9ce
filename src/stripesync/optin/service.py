"""Opt-in: the merchant's settings and activation, the preview, who gets the one email, and
what the person's answer records.

Who gets the email (mode `optin` only): a contact with consent `none`, not suppressed, whose
customer was created or who paid in the last 183 days. That one rule covers both the live
new customer and the import's "past 6 months". One row per (account, email hash) ever;
creating it moves the contact to `pending` (ledgered) and the send job is enqueued after
the commit. Everyone else (confirmed at checkout, implied in direct mode, declined,
unsubscribed) gets nothing.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.consent import record_consent
from stripesync.activity.hooks import contacts_changed
from stripesync.db import after_commit
from stripesync.kit.clock import utcnow
from stripesync.kit.tenancy import get_account
from stripesync.models import (
    Account,
    ConsentState,
    Contact,
    OptinEmail,
    OptinEmailSettings,
    OptinEmailVersion,
    OptinResponse,
)
from stripesync.optin import repository
from stripesync.optin.metrics import OPTIN_RESPONSES
from stripesync.optin.rendering import EmailContent, RenderedEmail, render_email
from stripesync.optin.repository import LEDGER_SOURCE
from stripesync.optin.schemas import OptinEmailIn, OptinEmailOut

log = structlog.get_logger(__name__)

# "Every customer from the past 6 months": created or paid within this many days.
ELIGIBLE_DAYS = 183
PREVIEW_PATH = "/optin/preview"

# Set by the processes that can enqueue (worker startup, API lifespan): after a commit
# that created opt-in rows, their send jobs are enqueued through it. Unset, the sweeper
# cron finds the rows within seconds; nothing is lost either way.
Enqueue = Callable[[list[int]], Awaitable[object]]
_enqueue: Enqueue | None = None


def configure_enqueue(enqueue: Enqueue | None) -> None:
    global _enqueue
    _enqueue = enqueue


# --- settings, activation, preview ------------------------------------------------------------


def default_settings(account: Account) -> OptinEmailOut:
    return OptinEmailOut(
        subject=f"{account.name}: may we keep you updated?",
        from_name=account.name[:100],
        from_email=account.owner_email,
        reply_to=account.owner_email,
        intro=(
            f"Thank you for being a customer of {account.name}. "
            "We would like to send you news and offers by email now and then."
        ),
        activated_at=None,
    )


def _out(row: OptinEmailSettings) -> OptinEmailOut:
    return OptinEmailOut(
        subject=row.subject,
        from_name=row.from_name,
        from_email=row.from_email,
        reply_to=row.reply_to,
        intro=row.intro,
        activated_at=row.activated_at,
    )


async def get_settings(session: AsyncSession, account_id: str) -> OptinEmailOut:
    account = await get_account(session, account_id)
    row = await repository.settings_row(session, account_id)
    return _out(row) if row is not None else default_settings(account)


async def put_settings(session: AsyncSession, account_id: str, body: OptinEmailIn) -> OptinEmailOut:
    """Save the settings; an activation stays (the merchant edits a reviewed email)."""
    await get_account(session, account_id, for_update=True)
    row = await repository.settings_row(session, account_id, for_update=True)
    if row is None:
        row = OptinEmailSettings(account_id=account_id)
        session.add(row)
    row.subject = body.subject
    row.from_name = body.from_name
    row.from_email = str(body.from_email).lower()
    row.reply_to = str(body.reply_to).lower()
    row.intro = body.intro.strip() if body.intro and body.intro.strip() else None
    row.updated_at = utcnow()
    await session.flush()
    return _out(row)


async def activate(session: AsyncSession, account_id: str) -> OptinEmailOut:
    """Mark the email reviewed and ready; saves the defaults first when nothing was saved.
    Idempotent: activating again keeps the first activation time."""
    account = await get_account(session, account_id, for_update=True)
    row = await repository.settings_row(session, account_id, for_update=True)
    if row is None:
        defaults = default_settings(account)
        row = OptinEmailSettings(
            account_id=account_id,
            **defaults.model_dump(exclude={"activated_at"}),
            updated_at=utcnow(),
        )
        session.add(row)
    if row.activated_at is None:
        row.activated_at = utcnow()
    await session.flush()
    log.info("optin_email_activated", account_id=account_id)
    return _out(row)


async def is_activated(session: AsyncSession, account_id: str) -> bool:
    """The activation check behind POST /stripe/connect with mode optin."""
    row = await repository.settings_row(session, account_id)
    return row is not None and row.activated_at is not None


async def current_content(session: AsyncSession, account_id: str) -> EmailContent:
    account = await get_account(session, account_id)
    current = await get_settings(session, account_id)
    return EmailContent(
        merchant_name=account.name,
        postal_address=account.postal_address,
        subject=current.subject,
        from_name=current.from_name,
        from_email=current.from_email,
        reply_to=current.reply_to,
        intro=current.intro,
    )


def links(public_base_url: str, token: str) -> tuple[str, str]:
    """(confirm, decline) links of one email: both open the page, which asks again, since
    a GET never changes anything (mail scanners follow links)."""
    page = f"{public_base_url.rstrip('/')}/optin/{token}"
    return f"{page}?answer=yes", f"{page}?answer=no"


def preview_links(public_base_url: str) -> tuple[str, str]:
    page = public_base_url.rstrip("/") + PREVIEW_PATH
    return f"{page}?answer=yes", f"{page}?answer=no"


async def preview(session: AsyncSession, public_base_url: str, account_id: str) -> RenderedEmail:
    content = await current_content(session, account_id)
    confirm_url, decline_url = preview_links(public_base_url)
    return render_email(content, confirm_url=confirm_url, decline_url=decline_url)


# --- who gets the one email -------------------------------------------------------------------


async def request_optin_emails(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> list[int]:
    """Create the opt-in email of each eligible contact (see the module docstring), move
    them to `pending` and enqueue the sends after commit. Returns the new rows' ids."""
    if not contact_ids or not await repository.optin_mode_active(session, account_id):
        return []
    since = utcnow() - timedelta(days=ELIGIBLE_DAYS)
    created = await repository.insert_for_eligible_contacts(session, account_id, contact_ids, since)
    for row in created:
        await record_consent(
            session,
            account_id,
            row.contact_id,
            ConsentState.PENDING,
            source=LEDGER_SOURCE,
            evidence={"optin_email_id": row.id, "event": "requested"},
        )
    if created:
        ids = [row.id for row in created]
        log.info("optin_emails_requested", account_id=account_id, count=len(ids))
        enqueue = _enqueue
        if enqueue is not None:
            after_commit(session, lambda: enqueue(ids))
    return [row.id for row in created]


async def optin_counts(session: AsyncSession, account_id: str) -> dict[str, int]:
    """The dashboard's `optin` block: emails actually sent, confirmed, declined, pending."""
    return await repository.counts(session, account_id)


# --- tokens and answers -----------------------------------------------------------------------


def new_token() -> tuple[str, str]:
    """(token for the link, its sha256 hex for the database)."""
    token = secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Recipient:
    """What the public pages know once a token checks out."""

    optin_email: OptinEmail
    version: OptinEmailVersion
    consent_state: str


class TokenProblem(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(str(status))
        self.status = status  # 404 unknown, 410 expired


async def resolve_token(
    session: AsyncSession, token: str, *, for_update: bool = False
) -> Recipient:
    """The email a token belongs to; raises TokenProblem(404) for an unknown token (also
    one whose person was erased) and TokenProblem(410) once the link expired."""
    if not token or len(token) > 100:
        raise TokenProblem(404)
    row = await repository.by_token_hash(session, token_hash(token), for_update=for_update)
    if row is None or row.contact_id is None or row.version_id is None:
        raise TokenProblem(404)
    version = await session.get(OptinEmailVersion, row.version_id)
    contact = await session.get(Contact, row.contact_id, with_for_update=for_update)
    if version is None or contact is None:
        raise TokenProblem(404)
    if row.expires_at is not None and row.expires_at <= utcnow():
        raise TokenProblem(410)
    return Recipient(optin_email=row, version=version, consent_state=contact.consent_state)


@dataclass(frozen=True)
class Answer:
    outcome: str  # confirmed | declined | already_declined | already_confirmed | closed
    merchant_name: str
    postal_address: str | None


async def answer(
    session: AsyncSession,
    token: str,
    response: OptinResponse,
    *,
    client_ip: str | None,
    user_agent: str | None,
) -> Answer:
    """Record the person's yes or no. A repeat, or a second answer after the first, changes
    nothing and reports what stands. The evidence names the exact email version sent."""
    recipient = await resolve_token(session, token, for_update=True)
    row, version = recipient.optin_email, recipient.version
    done = Answer("", version.merchant_name, version.postal_address)
    if row.response is not None:
        return _replace(done, f"already_{row.response}")
    if recipient.consent_state in (ConsentState.DECLINED, ConsentState.UNSUBSCRIBED):
        # The person said no elsewhere (or left the lists): their last word stands.
        return _replace(done, "closed")
    assert row.contact_id is not None
    now = utcnow()
    evidence: dict[str, Any] = {
        "optin_email_id": row.id,
        "email_version_id": version.id,
        "email_version_digest": version.digest,
        "answered_at": now.isoformat(),
        "ip": client_ip,
        "user_agent": (user_agent or "")[:500] or None,
    }
    state = ConsentState.CONFIRMED if response == OptinResponse.CONFIRMED else ConsentState.DECLINED
    await record_consent(
        session, row.account_id, row.contact_id, state, source=LEDGER_SOURCE, evidence=evidence
    )
    row.response = response
    row.responded_at = now
    await session.flush()
    # Segments recompute (a confirmed person joins their lists) and sync pushes the new
    # version with sign_up_form; a declined one is removed from everything.
    await contacts_changed(session, row.account_id, [row.contact_id])
    OPTIN_RESPONSES.labels(response.value).inc()
    log.info("optin_answered", account_id=row.account_id, optin_email_id=row.id, answer=response)
    return _replace(done, response.value)


def _replace(answer: Answer, outcome: str) -> Answer:
    return Answer(outcome, answer.merchant_name, answer.postal_address)


def expiry(sent_at: datetime, days: int) -> datetime:
    return sent_at + timedelta(days=days)
