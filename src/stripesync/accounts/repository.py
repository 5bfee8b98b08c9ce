"""All SQL of accounts and the Stripe connection. Every query is scoped by an account id."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

from sqlalchemy import Table, delete, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import (
    Base,
    ConnectionStatus,
    OAuthState,
    StripeConnection,
    StripeEvent,
)

# Tables `?purge=true` keeps, whatever else has an `account_id`:
# - the account and its connection history (tokens are wiped on revoke anyway);
# - legal evidence: the consent ledger, suppressions, the opt-in emails sent (hashed; the
#   one-email-ever rule must survive a reconnect) and the email versions consent names;
# - the merchant's configuration: segments and their settings, opt-in email settings,
#   the platform's custom fields (contacts already on the platform stay there);
# - jobs (operators' history).
# Everything else with an `account_id` is stored customer and payment data and goes. A
# new table can also opt out with `__table_args__ = (..., {"info": {"keep_on_purge": True}})`.
PURGE_KEEPS = frozenset(
    {
        "accounts",
        "stripe_connections",
        "oauth_states",
        "consent_events",
        "suppressions",
        "optin_emails",
        "optin_email_versions",
        "optin_email_settings",
        "segments",
        "segment_settings",
        "platform_custom_fields",
        "jobs",
    }
)


async def active_connection(
    session: AsyncSession, account_id: str, *, lock: bool = False
) -> StripeConnection | None:
    stmt = select(StripeConnection).where(
        StripeConnection.account_id == account_id,
        StripeConnection.status == ConnectionStatus.CONNECTED,
    )
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def latest_connection(session: AsyncSession, account_id: str) -> StripeConnection | None:
    stmt = (
        select(StripeConnection)
        .where(StripeConnection.account_id == account_id)
        .order_by(StripeConnection.id.desc())
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def connection_holding_stripe_account(
    session: AsyncSession, stripe_account_id: str
) -> StripeConnection | None:
    """The active connection of this Stripe account, whichever platform account has it."""
    stmt = select(StripeConnection).where(
        StripeConnection.stripe_account_id == stripe_account_id,
        StripeConnection.status == ConnectionStatus.CONNECTED,
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def stripe_account_ids(session: AsyncSession, account_id: str) -> list[str]:
    """Every Stripe account this platform account was ever connected to."""
    stmt = (
        select(StripeConnection.stripe_account_id)
        .where(StripeConnection.account_id == account_id)
        .distinct()
    )
    return list((await session.execute(stmt)).scalars())


async def latest_state(session: AsyncSession, account_id: str) -> OAuthState | None:
    stmt = (
        select(OAuthState)
        .where(OAuthState.account_id == account_id)
        .order_by(OAuthState.created_at.desc(), OAuthState.id)
        .limit(1)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def delete_spent_states(session: AsyncSession, expired_before: datetime) -> int:
    """Delete the states that expired before this time, except each account's latest one
    (the account shows how its last attempt ended). An expired state can no longer connect
    anything; a callback naming a deleted one is refused as `invalid_state`."""
    result = await session.execute(
        text(
            "DELETE FROM oauth_states s WHERE s.expires_at < :before AND s.id <> ("
            " SELECT l.id FROM oauth_states l WHERE l.account_id = s.account_id"
            " ORDER BY l.created_at DESC, l.id LIMIT 1)"
        ),
        {"before": expired_before},
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def lock_state(session: AsyncSession, state_id: str) -> OAuthState | None:
    stmt = select(OAuthState).where(OAuthState.id == state_id).with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


def purgeable_tables() -> list[Table]:
    """Tables holding an account's stored customer data, dependents first (FK order)."""
    return [
        table
        for table in reversed(Base.metadata.sorted_tables)
        if "account_id" in table.columns
        and table.name not in PURGE_KEEPS
        and not table.info.get("keep_on_purge")
    ]


async def purge_account_data(
    session: AsyncSession, account_id: str, stripe_accounts: Collection[str]
) -> dict[str, int]:
    """Delete the account's stored customer and payment data and its stored Stripe events.

    Generic on purpose: any table with an `account_id` column not in PURGE_KEEPS is
    purged, so tables added by later features are covered without editing this.
    Returns deleted row counts by table.
    """
    deleted: dict[str, int] = {}
    for table in purgeable_tables():
        result = await session.execute(delete(table).where(table.c.account_id == account_id))
        deleted[table.name] = int(getattr(result, "rowcount", 0) or 0)
    if stripe_accounts:
        result = await session.execute(
            delete(StripeEvent).where(StripeEvent.account.in_(list(stripe_accounts)))
        )
        deleted[StripeEvent.__tablename__] = int(getattr(result, "rowcount", 0) or 0)
    return deleted
