"""Accounts: register/update, the dashboard's data, disconnecting Stripe."""

from __future__ import annotations

from datetime import datetime

import httpx
import structlog
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, default_queue_name, job_key_prefix, retry_key_prefix
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts import repository
from stripesync.accounts.oauth import import_job_id
from stripesync.accounts.schemas import (
    AccountIn,
    AccountOut,
    CcCredentialsOut,
    DashboardOut,
    ImportBlock,
    OptinCounts,
    StripeBlock,
)
from stripesync.clients.stripe import StripeClient, StripeError, StripeUnavailable
from stripesync.config import Settings
from stripesync.imports import service as imports_service
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.kit.tenancy import get_account
from stripesync.models import Account, ConnectionStatus, StripeConnection
from stripesync.optin.service import optin_counts
from stripesync.segments.schemas import SegmentSummary
from stripesync.segments.service import segments_summary

log = structlog.get_logger(__name__)


# --- PUT /v1/accounts/{account_id} -------------------------------------------------------------


async def upsert_account(
    session: AsyncSession, settings: Settings, account_id: str, body: AccountIn
) -> tuple[Account, bool]:
    """Create or update the account; returns (account, created). New Constant Contact
    credentials replace the stored ones (encrypted) and clear a previous refresh error."""
    inserted = await session.execute(
        insert(Account)
        .values(id=account_id, name=body.name, owner_email=body.owner_email)
        .on_conflict_do_nothing(index_elements=[Account.id])
        .returning(Account.id)
    )
    created = inserted.scalar_one_or_none() is not None
    account = await get_account(session, account_id, for_update=True)
    account.name = body.name
    account.owner_email = str(body.owner_email)
    account.postal_address = body.postal_address
    if body.cc_credentials is not None:
        creds = body.cc_credentials
        account.cc_access_token_encrypted = crypto.encrypt(
            settings, creds.access_token.get_secret_value()
        )
        account.cc_refresh_token_encrypted = (
            crypto.encrypt(settings, creds.refresh_token.get_secret_value())
            if creds.refresh_token is not None
            else None
        )
        account.cc_token_expires_at = creds.expires_at
        account.cc_token_refreshed_at = None
        account.cc_token_error = None
    account.updated_at = utcnow()
    await session.flush()
    log.info("account_saved", account_id=account_id, created=created)
    return account, created


def account_out(account: Account) -> AccountOut:
    creds = None
    if account.cc_access_token_encrypted is not None:
        creds = CcCredentialsOut(
            expires_at=account.cc_token_expires_at, error=account.cc_token_error
        )
    return AccountOut(
        account_id=account.id,
        name=account.name,
        owner_email=account.owner_email,
        postal_address=account.postal_address,
        cc_credentials=creds,
        created_at=account.created_at,
        updated_at=account.updated_at,
    )


# --- GET /v1/accounts/{account_id} -------------------------------------------------------------


async def dashboard(session: AsyncSession, account_id: str) -> DashboardOut:
    """The integration dashboard: one small function per block, so each later feature
    fills its own block (imports, segments) by replacing one function body."""
    account = await get_account(session, account_id)
    return DashboardOut(
        account_id=account.id,
        name=account.name,
        owner_email=account.owner_email,
        stripe=await stripe_block(session, account_id),
        import_=await import_block(session, account_id),
        optin=await optin_block(session, account_id),
        segments=await segments_block(session, account_id),
    )


async def stripe_block(session: AsyncSession, account_id: str) -> StripeBlock:
    """Connection state: the active connection, else a newer connect attempt (pending, or
    error with its reason), else the last connection's history, else not_connected."""
    now = utcnow()
    connection = await repository.latest_connection(session, account_id)
    if connection is not None and connection.status == ConnectionStatus.CONNECTED:
        status = "error" if connection.error else "connected"
        return _connection_block(connection, status)

    attempt = await repository.latest_state(session, account_id)
    last_change = _last_change(connection)
    if attempt is not None and (last_change is None or attempt.created_at > last_change):
        if attempt.used_at is None and attempt.expires_at > now:
            return StripeBlock(status="pending", mode=attempt.mode)
        if attempt.outcome not in (None, "connected"):
            return StripeBlock(status="error", mode=attempt.mode, error=attempt.outcome)
    if connection is not None:
        return _connection_block(connection, connection.status)
    return StripeBlock(status="not_connected")


def _last_change(connection: StripeConnection | None) -> datetime | None:
    if connection is None:
        return None
    return connection.revoked_at or connection.connected_at


def _connection_block(connection: StripeConnection, status: str) -> StripeBlock:
    return StripeBlock(
        status=status,
        stripe_account_id=connection.stripe_account_id,
        livemode=connection.livemode,
        mode=connection.mode,
        connected_at=connection.connected_at,
        last_event_at=connection.last_event_at,
        revoked_at=connection.revoked_at,
        error=connection.error,
    )


async def import_block(session: AsyncSession, account_id: str) -> ImportBlock | None:
    """The account's latest import job (imports.service.import_block)."""
    return await imports_service.import_block(session, account_id)


async def optin_block(session: AsyncSession, account_id: str) -> OptinCounts:
    """The opt-in emails actually sent and their answers (optin.service.optin_counts)."""
    return OptinCounts(**await optin_counts(session, account_id))


async def segments_block(session: AsyncSession, account_id: str) -> list[SegmentSummary]:
    """The account's segments with exact member counts (segments.service.segments_summary)."""
    return await segments_summary(session, account_id)


# --- DELETE /v1/accounts/{account_id}/stripe ---------------------------------------------------


def revoke_connection(connection: StripeConnection, *, reason: str) -> None:
    """Mark the connection revoked and forget its tokens. From then on its events are
    `ignored` (webhooks.tasks only applies events of `connected` connections)."""
    connection.status = ConnectionStatus.REVOKED
    connection.revoked_at = utcnow()
    connection.access_token_encrypted = None
    connection.refresh_token_encrypted = None
    connection.token_expires_at = None
    connection.error = None if reason == "disconnected" else reason
    log.info("stripe_connection_revoked", connection_id=connection.id, reason=reason)


async def disconnect(
    session: AsyncSession,
    http: httpx.AsyncClient,
    redis: ArqRedis | None,
    settings: Settings,
    account_id: str,
    *,
    purge: bool,
) -> None:
    """Revoke the active connection (if any), cancel its queued jobs, deauthorize at Stripe
    (best effort) and, with `purge`, delete the account's stored customer data.

    Idempotent: disconnecting a disconnected account changes nothing (purge still runs).
    """
    await get_account(session, account_id, for_update=True)
    connection = await repository.active_connection(session, account_id, lock=True)
    if connection is not None:
        revoke_connection(connection, reason="disconnected")
        await imports_service.cancel_connection_imports(session, connection.id)
    if purge:
        await purge_stored_data(session, account_id)
    await session.flush()
    if connection is None:
        return
    await cancel_connection_jobs(redis, account_id, connection.id)
    await deauthorize_best_effort(http, settings, connection)


async def purge_stored_data(session: AsyncSession, account_id: str) -> dict[str, int]:
    """Delete the account's stored customer/payment data (repository.PURGE_KEEPS says what
    stays) and the stored events of its Stripe accounts, except those of a Stripe account
    now connected to another platform account (that data is theirs)."""
    stripe_accounts = []
    for stripe_account in await repository.stripe_account_ids(session, account_id):
        holder = await repository.connection_holding_stripe_account(session, stripe_account)
        if holder is None or holder.account_id == account_id:
            stripe_accounts.append(stripe_account)
    deleted = await repository.purge_account_data(session, account_id, stripe_accounts)
    log.info("account_data_purged", account_id=account_id, deleted=deleted)
    return deleted


async def cancel_connection_jobs(
    redis: ArqRedis | None, account_id: str, connection_id: int
) -> None:
    """Cancel the connection's historical import: removed from the queue when still queued,
    flagged for abort when running (honoured by workers with `allow_abort_jobs`; the import
    also stops on its own when it sees the connection revoked). Event jobs need no
    cancelling: they find the connection revoked and record the event as `ignored`."""
    if redis is None:
        return
    job_id = import_job_id(account_id, connection_id)
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.zrem(default_queue_name, job_id)
            pipe.delete(job_key_prefix + job_id, retry_key_prefix + job_id)
            pipe.zadd(abort_jobs_ss, {job_id: int(utcnow().timestamp() * 1000)})
            await pipe.execute()
    except Exception as exc:  # Redis down: the import checks the connection's status anyway
        log.warning("cancel_jobs_failed", account_id=account_id, error=type(exc).__name__)


async def deauthorize_best_effort(
    http: httpx.AsyncClient, settings: Settings, connection: StripeConnection
) -> None:
    try:
        await StripeClient(http, settings).deauthorize(connection.stripe_account_id)
    except (StripeError, StripeUnavailable) as exc:
        # Already revoked at Stripe, or Stripe is down: we stopped using the account anyway.
        log.warning("stripe_deauthorize_failed", connection_id=connection.id, error=str(exc))
    except Exception as exc:  # a missing setting, say: the disconnect itself must stand
        log.warning(
            "stripe_deauthorize_failed", connection_id=connection.id, error=type(exc).__name__
        )
    else:
        log.info("stripe_deauthorized", connection_id=connection.id)
