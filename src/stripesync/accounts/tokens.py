"""Valid access tokens on demand: Constant Contact per account, Stripe per connection.

Both refresh the same way (external-apis.md): when a token nears expiry, exactly ONE caller
refreshes it while the others wait, across every process. The lock is the row itself
(`SELECT ... FOR UPDATE` in a short transaction): the caller that gets it re-checks expiry
(another may have refreshed while it waited), refreshes, and commits the new pair BEFORE
anyone uses it, because rotating refresh tokens are single-use: losing the new pair would
force the merchant to re-authorize.

Call sites:
- sync engine: `await cc_access_token(factory, http, settings, account_id)`, and on a 401
  from the platform `..., force_refresh=True)` once, then retry the call.
- anything calling Stripe with the connection's own token: `stripe_access_token(...)`.
Both raise `TokenUnavailable` when no token can be had (not connected, revoked, or the
refresh was refused; the reason is stored on the row for the dashboard), and let
`CcAuthUnavailable` / `StripeUnavailable` through when the token endpoint is down (retry).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.clients.cc_auth import CcAuthError, refresh_cc_token
from stripesync.clients.stripe import StripeClient, StripeError
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.models import Account, ConnectionStatus, StripeConnection

log = structlog.get_logger(__name__)

# Refresh this long before expiry, so a token handed out still works for the call it is for.
REFRESH_MARGIN = timedelta(minutes=5)
# A forced refresh (after a 401) is skipped when another caller refreshed this recently:
# ten workers hitting the same 401 make one refresh, not ten.
FORCED_REFRESH_GRACE = timedelta(seconds=30)


class TokenUnavailable(Exception):
    """No usable token: not connected, revoked, or the refresh was refused."""


def _needs_refresh(
    expires_at: datetime | None, refreshed_at: datetime | None, *, force: bool, now: datetime
) -> bool:
    if force:
        return refreshed_at is None or now - refreshed_at >= FORCED_REFRESH_GRACE
    return expires_at is not None and expires_at - now <= REFRESH_MARGIN


def _expiry(now: datetime, expires_in: int | None) -> datetime | None:
    return now + timedelta(seconds=expires_in) if expires_in is not None else None


# --- Constant Contact -------------------------------------------------------------------------


async def cc_access_token(
    session_factory: SessionFactory,
    http: httpx.AsyncClient,
    settings: Settings,
    account_id: str,
    *,
    force_refresh: bool = False,
) -> str:
    """A valid Constant Contact access token of the account, refreshed single-flight."""
    if not force_refresh:
        async with transaction(session_factory) as session:
            account = await session.get(Account, account_id)
            token = _usable_cc_token(settings, account, account_id, force=False)
            if token is not None:
                return token

    failure: TokenUnavailable | None = None
    async with transaction(session_factory) as session:
        account = await session.get(
            Account, account_id, with_for_update=True, populate_existing=True
        )
        token = _usable_cc_token(settings, account, account_id, force=force_refresh)
        if token is not None:
            return token
        assert account is not None
        refresh_token = crypto.decrypt_optional(settings, account.cc_refresh_token_encrypted)
        if refresh_token is None:
            raise TokenUnavailable(f"account {account_id} has no Constant Contact refresh token")
        try:
            tokens = await refresh_cc_token(http, settings, refresh_token)
        except CcAuthError as exc:
            # Keep the lock's transaction to record why; the platform must re-authorize.
            account.cc_token_error = f"refresh refused: {exc.code}"
            failure = TokenUnavailable(f"Constant Contact refused the refresh ({exc.code})")
            log.warning("cc_token_refresh_refused", account_id=account_id, code=exc.code)
        else:
            now = utcnow()
            account.cc_access_token_encrypted = crypto.encrypt(settings, tokens.access_token)
            if tokens.refresh_token is not None:
                account.cc_refresh_token_encrypted = crypto.encrypt(settings, tokens.refresh_token)
            account.cc_token_expires_at = _expiry(now, tokens.expires_in)
            account.cc_token_refreshed_at = now
            account.cc_token_error = None
            log.info("cc_token_refreshed", account_id=account_id)
            # Returning leaves the `async with`: the new pair commits before the caller uses it.
            return tokens.access_token
    raise failure


def _usable_cc_token(
    settings: Settings, account: Account | None, account_id: str, *, force: bool
) -> str | None:
    if account is None:
        raise TokenUnavailable(f"no account {account_id}")
    if account.cc_access_token_encrypted is None:
        raise TokenUnavailable(f"account {account_id} has no Constant Contact credentials")
    if account.cc_token_error is not None:
        # A refused refresh token stays refused: wait for new credentials (PUT account).
        raise TokenUnavailable(f"account {account_id}: {account.cc_token_error}")
    refresh = _needs_refresh(
        account.cc_token_expires_at, account.cc_token_refreshed_at, force=force, now=utcnow()
    )
    return None if refresh else crypto.decrypt(settings, account.cc_access_token_encrypted)


# --- Stripe connection ------------------------------------------------------------------------


async def stripe_access_token(
    session_factory: SessionFactory,
    http: httpx.AsyncClient,
    settings: Settings,
    account_id: str,
    *,
    force_refresh: bool = False,
) -> str:
    """The access token of the account's active Stripe connection, refreshed single-flight
    when the grant had `expires_in` (Stripe Apps OAuth); classic Connect tokens never expire.

    (Calls on behalf of a connected account can also use the platform key with the
    `Stripe-Account` header; this is for code that needs the connection's own token.)
    """
    if not force_refresh:
        async with transaction(session_factory) as session:
            connection = await _active_connection(session, account_id, lock=False)
            token = _usable_stripe_token(settings, connection, account_id, force=False)
            if token is not None:
                return token

    failure: TokenUnavailable | None = None
    async with transaction(session_factory) as session:
        connection = await _active_connection(session, account_id, lock=True)
        token = _usable_stripe_token(settings, connection, account_id, force=force_refresh)
        if token is not None:
            return token
        assert connection is not None
        refresh_token = crypto.decrypt_optional(settings, connection.refresh_token_encrypted)
        if refresh_token is None:
            raise TokenUnavailable(f"Stripe connection {connection.id} has no refresh token")
        try:
            grant = await StripeClient(http, settings).refresh_token(refresh_token)
        except StripeError as exc:
            # Webhook events need no token and keep flowing; the dashboard shows the error
            # and the merchant reconnects.
            connection.error = f"token refresh refused: {exc.code}"
            failure = TokenUnavailable(f"Stripe refused the refresh ({exc.code})")
            log.warning("stripe_token_refresh_refused", connection_id=connection.id, code=exc.code)
        else:
            now = utcnow()
            connection.access_token_encrypted = crypto.encrypt(settings, grant.access_token)
            if grant.refresh_token is not None:
                connection.refresh_token_encrypted = crypto.encrypt(settings, grant.refresh_token)
            connection.token_expires_at = _expiry(now, grant.expires_in)
            connection.token_refreshed_at = now
            if grant.scope:
                connection.scope = grant.scope
            log.info("stripe_token_refreshed", connection_id=connection.id)
            return grant.access_token
    raise failure


async def _active_connection(
    session: AsyncSession, account_id: str, *, lock: bool
) -> StripeConnection | None:
    stmt = select(StripeConnection).where(
        StripeConnection.account_id == account_id,
        StripeConnection.status == ConnectionStatus.CONNECTED,
    )
    if lock:
        stmt = stmt.with_for_update().execution_options(populate_existing=True)
    return (await session.execute(stmt)).scalar_one_or_none()


def _usable_stripe_token(
    settings: Settings, connection: StripeConnection | None, account_id: str, *, force: bool
) -> str | None:
    if connection is None or connection.access_token_encrypted is None:
        raise TokenUnavailable(f"account {account_id} has no active Stripe connection")
    if connection.error is not None:
        raise TokenUnavailable(f"account {account_id}: {connection.error}")
    refresh = _needs_refresh(
        connection.token_expires_at, connection.token_refreshed_at, force=force, now=utcnow()
    )
    return None if refresh else crypto.decrypt(settings, connection.access_token_encrypted)
