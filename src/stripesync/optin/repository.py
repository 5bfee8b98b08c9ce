"""All SQL of the opt-in feature."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, bindparam, func, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import (
    ConnectionMode,
    ConnectionStatus,
    OptinEmail,
    OptinEmailSettings,
    OptinEmailState,
    OptinEmailVersion,
    OptinResponse,
    StripeConnection,
)
from stripesync.optin.rendering import TEMPLATE_VERSION, EmailContent

LEDGER_SOURCE = "optin_email"


async def settings_row(
    session: AsyncSession, account_id: str, *, for_update: bool = False
) -> OptinEmailSettings | None:
    return await session.get(OptinEmailSettings, account_id, with_for_update=for_update)


async def optin_mode_active(session: AsyncSession, account_id: str) -> bool:
    """Whether the account's active Stripe connection asks for permission (mode optin)."""
    mode = await session.scalar(
        select(StripeConnection.mode).where(
            StripeConnection.account_id == account_id,
            StripeConnection.status == ConnectionStatus.CONNECTED,
        )
    )
    return mode == ConnectionMode.OPTIN


@dataclass(frozen=True)
class NewOptinEmail:
    id: int
    contact_id: int


async def insert_for_eligible_contacts(
    session: AsyncSession, account_id: str, contact_ids: Collection[int], since: datetime
) -> list[NewOptinEmail]:
    """One opt-in email row for each of these contacts that has not been asked, never
    answered, and became a customer or paid since `since`.

    ON CONFLICT DO NOTHING on (account, email hash) is the one-email-ever rule: a concurrent
    insert for the same address waits for the other transaction and then inserts nothing.
    The ledger check covers an address whose row a purge removed: once asked, never again.
    Suppressed (erased) addresses are skipped. Returns only the rows this call created.
    """
    stmt = text(
        """
        INSERT INTO optin_emails (account_id, contact_id, email_hash, state, next_attempt_at)
        SELECT c.account_id, c.id, encode(sha256(convert_to(c.email, 'UTF8')), 'hex'),
               'queued', now()
        FROM contacts c
        WHERE c.account_id = :account_id
          AND c.id = ANY(:ids)
          AND c.consent_state = 'none'
          AND (c.customer_created_at >= :since OR c.last_purchase_at >= :since)
          AND NOT EXISTS (
              SELECT 1 FROM suppressions s
              WHERE s.account_id = c.account_id
                AND s.email_hash = encode(sha256(convert_to(c.email, 'UTF8')), 'hex'))
          AND NOT EXISTS (
              SELECT 1 FROM consent_events e
              WHERE e.account_id = c.account_id
                AND e.email_hash = encode(sha256(convert_to(c.email, 'UTF8')), 'hex')
                AND e.source = :source)
        ORDER BY c.id
        ON CONFLICT ON CONSTRAINT uq_optin_emails_account_email DO NOTHING
        RETURNING id, contact_id
        """
    ).bindparams(bindparam("ids", type_=ARRAY(BigInteger)))
    rows = await session.execute(
        stmt,
        {
            "account_id": account_id,
            "ids": sorted(contact_ids),
            "since": since,
            "source": LEDGER_SOURCE,
        },
    )
    return [NewOptinEmail(id=row.id, contact_id=row.contact_id) for row in rows]


async def claim_for_sending(
    session: AsyncSession, optin_email_id: int, now: datetime
) -> OptinEmail | None:
    """Lock the row if it is due for a send attempt; None when another job holds it or it
    needs nothing (already sent, rejected, not due yet)."""
    return await session.scalar(
        select(OptinEmail)
        .where(
            OptinEmail.id == optin_email_id,
            OptinEmail.state == OptinEmailState.QUEUED,
            OptinEmail.next_attempt_at <= now,
        )
        .with_for_update(skip_locked=True)
    )


async def version_for(session: AsyncSession, account_id: str, content: EmailContent) -> int:
    """The id of this exact email content, stored once per account."""
    digest = content.digest()
    await session.execute(
        insert(OptinEmailVersion)
        .values(
            account_id=account_id,
            digest=digest,
            template_version=TEMPLATE_VERSION,
            **content.__dict__,
        )
        .on_conflict_do_nothing(constraint="uq_optin_email_versions_digest")
    )
    version_id = await session.scalar(
        select(OptinEmailVersion.id).where(
            OptinEmailVersion.account_id == account_id, OptinEmailVersion.digest == digest
        )
    )
    assert version_id is not None
    return version_id


async def due_ids(session: AsyncSession, now: datetime, *, stale_before: datetime) -> list[int]:
    """Rows needing a send attempt, in accounts still connected in mode optin. Claims older
    than `stale_before` (a worker died mid-send) go back to queued first."""
    await session.execute(
        update(OptinEmail)
        .where(
            OptinEmail.state == OptinEmailState.SENDING,
            OptinEmail.claimed_at < stale_before,
        )
        .values(state=OptinEmailState.QUEUED, claimed_at=None)
    )
    active_optin = select(StripeConnection.account_id).where(
        StripeConnection.status == ConnectionStatus.CONNECTED,
        StripeConnection.mode == ConnectionMode.OPTIN,
    )
    rows = await session.scalars(
        select(OptinEmail.id)
        .where(
            OptinEmail.state == OptinEmailState.QUEUED,
            OptinEmail.next_attempt_at <= now,
            OptinEmail.account_id.in_(active_optin),
        )
        .order_by(OptinEmail.next_attempt_at, OptinEmail.id)
        .limit(1000)
    )
    return list(rows)


async def by_token_hash(
    session: AsyncSession, token_hash: str, *, for_update: bool = False
) -> OptinEmail | None:
    stmt = select(OptinEmail).where(OptinEmail.token_hash == token_hash)
    if for_update:
        stmt = stmt.with_for_update()
    return await session.scalar(stmt)


async def counts(session: AsyncSession, account_id: str) -> dict[str, int]:
    """sent (the server accepted it), confirmed, declined, pending (sent, no answer yet)."""
    sent = OptinEmail.sent_at.is_not(None)
    row = (
        await session.execute(
            select(
                func.count().filter(sent),
                func.count().filter(OptinEmail.response == OptinResponse.CONFIRMED),
                func.count().filter(OptinEmail.response == OptinResponse.DECLINED),
                func.count().filter(sent, OptinEmail.response.is_(None)),
            ).where(OptinEmail.account_id == account_id)
        )
    ).one()
    return {"sent": row[0], "confirmed": row[1], "declined": row[2], "pending": row[3]}
