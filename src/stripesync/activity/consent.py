"""Consent: the state on the contact and the append-only `consent_events` ledger.

Rules owned here (the opt-in and sync features add their own transitions through
`record_consent`):
- Nobody moves a contact out of `unsubscribed` or `declined`: the person's own word is final.
- `implied` is only ever given to a contact at `none` (direct mode, the merchant's affirmation).
- A checkout where the buyer ticked the promotions box (`consent.promotions == "opt_in"`)
  is the buyer's own explicit consent: `confirmed`.
- A contact created again for an address the ledger knows starts from what the person said
  last (unsubscribed, declined, confirmed), so deleting a contact row never forgets it.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from sqlalchemy import String, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.context import ActivityContext
from stripesync.activity.identity import email_hash
from stripesync.kit.clock import utcnow
from stripesync.models import ConsentState, Contact

FINAL_CONSENT = (ConsentState.UNSUBSCRIBED, ConsentState.DECLINED)
# Ledger states a re-created contact inherits: what the person said themselves.
INHERITED_CONSENT = (*FINAL_CONSENT, ConsentState.CONFIRMED)


def transition_allowed(current: str, new: str) -> bool:
    if current == new or current in FINAL_CONSENT:
        return False
    return not (new == ConsentState.IMPLIED and current != ConsentState.NONE)


async def append_ledger(
    session: AsyncSession,
    account_id: str,
    *,
    contact_id: int | None,
    email: str,
    state: str,
    source: str,
    evidence: dict[str, Any],
) -> None:
    await append_ledger_entries(
        session, account_id, [(contact_id, email)], state=state, source=source, evidence=evidence
    )


async def append_ledger_entries(
    session: AsyncSession,
    account_id: str,
    people: Collection[tuple[int | None, str]],
    *,
    state: str,
    source: str,
    evidence: dict[str, Any],
) -> None:
    """The same entry for many (contact_id, email) pairs, in one statement."""
    if not people:
        return
    await session.execute(
        text(
            """
            INSERT INTO consent_events (account_id, contact_id, email_hash, state, source,
                evidence, created_at)
            SELECT :account_id, u.contact_id, u.email_hash, :state, :source,
                CAST(:evidence AS jsonb), :created_at
            FROM unnest(CAST(:contact_ids AS bigint[]), CAST(:hashes AS text[]))
                AS u(contact_id, email_hash)
            """
        ),
        {
            "account_id": account_id,
            "contact_ids": [contact_id for contact_id, _ in people],
            "hashes": [email_hash(email) for _, email in people],
            "state": state,
            "source": source,
            "evidence": json.dumps(evidence),
            "created_at": utcnow(),
        },
    )


async def latest_ledger_states(
    session: AsyncSession, account_id: str, emails: Collection[str]
) -> dict[str, str]:
    """The last recorded consent state of each address (by email hash) the ledger knows."""
    if not emails:
        return {}
    by_hash = {email_hash(e): e for e in emails}
    rows = await session.execute(
        text(
            """
            SELECT DISTINCT ON (email_hash) email_hash, state FROM consent_events
            WHERE account_id = :account_id AND email_hash = ANY(:hashes)
            ORDER BY email_hash, id DESC
            """
        ).bindparams(bindparam("hashes", type_=ARRAY(String))),
        {"account_id": account_id, "hashes": list(by_hash)},
    )
    return {by_hash[row.email_hash]: row.state for row in rows}


def direct_mode_evidence(ctx: ActivityContext) -> dict[str, Any]:
    """Implied consent rests on the merchant's affirmation, stored with the connection."""
    return {"connection_id": ctx.connection_id, "mode": ctx.mode, "basis": "merchant_affirmed"}


def initial_consent(ctx: ActivityContext, ledger_state: str | None) -> str:
    if ledger_state in INHERITED_CONSENT:
        return str(ledger_state)
    return ConsentState.IMPLIED if ctx.direct else ConsentState.NONE


async def record_consent(
    session: AsyncSession,
    account_id: str,
    contact_id: int,
    state: str,
    *,
    source: str,
    evidence: dict[str, Any],
) -> bool:
    """Move a contact to `state` when the rules allow it: bumps `version` (the change feed)
    and appends the ledger entry in the same transaction. Returns whether it changed."""
    contact = await session.scalar(
        select(Contact)
        .where(Contact.account_id == account_id, Contact.id == contact_id)
        .with_for_update(key_share=True)  # FOR NO KEY UPDATE: foreign keys may still point here
    )
    if contact is None or not transition_allowed(contact.consent_state, state):
        return False
    contact.consent_state = state
    contact.version = contact.version + 1
    await append_ledger(
        session,
        account_id,
        contact_id=contact.id,
        email=contact.email,
        state=state,
        source=source,
        evidence=evidence,
    )
    return True


async def record_unsubscribed(
    session: AsyncSession, account_id: str, email: str, *, source: str, evidence: dict[str, Any]
) -> int | None:
    """The person left the platform's lists. With a contact: its state changes (and its
    version, so sync removes them). Without one: the ledger remembers the address, so a
    contact created later starts unsubscribed. Returns the changed contact's id."""
    contact_id = await session.scalar(
        select(Contact.id).where(Contact.account_id == account_id, Contact.email == email)
    )
    if contact_id is not None:
        changed = await record_consent(
            session,
            account_id,
            contact_id,
            ConsentState.UNSUBSCRIBED,
            source=source,
            evidence=evidence,
        )
        return contact_id if changed else None
    latest = (await latest_ledger_states(session, account_id, [email])).get(email)
    if latest != ConsentState.UNSUBSCRIBED:
        await append_ledger(
            session,
            account_id,
            contact_id=None,
            email=email,
            state=ConsentState.UNSUBSCRIBED,
            source=source,
            evidence=evidence,
        )
    return None
