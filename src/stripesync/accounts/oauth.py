"""Connecting a Stripe account: `POST /stripe/connect` hands out the authorize URL, the
callback exchanges the code and stores the connection.

The OAuth `state` is a sealed (authenticated, encrypted; kit/crypto.seal) token naming the
account, a random nonce and the return URL. Its server side is an `oauth_states` row: the
state expires after 30 minutes and is used once (claimed under a row lock and committed
BEFORE the code exchange, so two callbacks with one state cannot both connect).

Nothing is stored as a connection until Stripe has answered with tokens: a refused or
failed exchange leaves no half-made connection, and the merchant is sent back to
`return_url?status=error&reason=...` (`&retry=true` when trying again may work).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import structlog
from arq.connections import ArqRedis
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts import repository
from stripesync.accounts.schemas import ConnectIn, ConnectOut
from stripesync.clients.stripe import StripeClient, StripeError, StripeUnavailable, TokenGrant
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.kit.errors import ApiError
from stripesync.kit.tenancy import get_account
from stripesync.models import (
    Account,
    ConnectionStatus,
    OAuthState,
    StripeConnection,
)

log = structlog.get_logger(__name__)

STATE_TTL = timedelta(minutes=30)
IMPORT_HISTORY = "import_history"

# --- seams for later features ------------------------------------------------------------------

OptinActivationCheck = Callable[[AsyncSession, str], Awaitable[bool]]
ConnectedHook = Callable[[AsyncSession, StripeConnection], Awaitable[None]]

_optin_activation_check: OptinActivationCheck | None = None
_connected_hooks: list[ConnectedHook] = []


def set_optin_activation_check(check: OptinActivationCheck) -> None:
    """The opt-in feature registers `check(session, account_id) -> activated?`.

    Until one is registered no opt-in email can have been activated, so mode `optin`
    answers 409 `optin_email_not_activated` (api.md).
    """
    global _optin_activation_check
    _optin_activation_check = check


def on_stripe_connected(hook: ConnectedHook) -> ConnectedHook:
    """Register `hook(session, connection)`, run in the callback's transaction right after
    the connection row is stored (e.g. creating the built-in segment lists' rows; outside
    calls belong in jobs). The module must be listed in dispatch.HANDLER_MODULES."""
    if hook not in _connected_hooks:
        _connected_hooks.append(hook)
    return hook


def import_job_id(account_id: str, connection_id: int) -> str:
    """The arq job id of a connection's historical import (deterministic, so disconnect can
    cancel it and a second enqueue of the same import is a no-op)."""
    return f"import:{account_id}:{connection_id}"


# --- POST /v1/accounts/{account_id}/stripe/connect ---------------------------------------------


def return_url_allowed(settings: Settings, url: str) -> bool:
    """`url` starts with an allowed prefix AND the prefix ends at a URL boundary, so
    `http://localhost` does not admit `http://localhost.evil.example` or `...@evil`."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a netloc NFKC-normalising to separators (`localhost\uff03@evil`)
        return False
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        return False
    for prefix in settings.allowed_return_url_prefixes:
        if not url.startswith(prefix):
            continue
        rest = url[len(prefix) :]
        if not rest or prefix.endswith("/") or rest[0] in "/?#" or _port_follows(rest):
            return True
    return False


def _port_follows(rest: str) -> bool:
    return re.match(r":\d+(?:[/?#]|$)", rest) is not None


def _field_error(code: str, field: str, message: str) -> ApiError:
    return ApiError(
        422, code, message, {"fields": [{"field": f"body.{field}", "message": message}]}
    )


async def start_connect(
    session: AsyncSession,
    settings: Settings,
    account_id: str,
    body: ConnectIn,
    *,
    client_ip: str | None,
    user_agent: str | None,
) -> ConnectOut:
    """Validate, record the attempt (and direct mode's consent evidence), build the URL."""
    if not return_url_allowed(settings, body.return_url):
        raise _field_error(
            "return_url_not_allowed",
            "return_url",
            "return_url must start with one of the allowed return URL prefixes.",
        )
    if body.mode == "direct":
        if body.prior_consent_affirmed is not True:
            raise _field_error(
                "prior_consent_required",
                "prior_consent_affirmed",
                "Mode direct needs prior_consent_affirmed: true.",
            )
        if not body.affirmed_by:
            raise _field_error(
                "prior_consent_required", "affirmed_by", "Mode direct needs affirmed_by."
            )
    if not settings.stripe_client_id:
        raise ApiError(503, "stripe_not_configured", "STRIPESYNC_STRIPE_CLIENT_ID is not set.")

    await get_account(session, account_id, for_update=True)
    if await repository.active_connection(session, account_id) is not None:
        raise ApiError(409, "already_connected", "This account is already connected to Stripe.")
    if body.mode == "optin" and not await _optin_activated(session, account_id):
        raise ApiError(
            409,
            "optin_email_not_activated",
            "Activate the opt-in email before connecting in mode optin.",
        )

    now = utcnow()
    state = OAuthState(
        id=secrets.token_urlsafe(24),
        account_id=account_id,
        mode=body.mode,
        return_url=body.return_url,
        created_at=now,
        expires_at=now + STATE_TTL,
    )
    if body.mode == "direct":
        state.consent_affirmed_by = body.affirmed_by
        state.consent_affirmed_at = now
        state.consent_client_ip = (client_ip or "")[:64] or None
        state.consent_user_agent = (user_agent or "")[:1000] or None
    session.add(state)
    await session.flush()

    sealed = crypto.seal(
        settings,
        {
            "n": state.id,
            "a": account_id,
            "r": body.return_url,
            "exp": int(state.expires_at.timestamp()),
        },
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": settings.stripe_client_id,
            "scope": "read_only",
            "redirect_uri": redirect_uri(settings),
            "state": sealed,
        }
    )
    log.info("stripe_connect_started", account_id=account_id, mode=body.mode)
    return ConnectOut(
        authorize_url=f"{settings.stripe_oauth_authorize_url}?{query}", expires_at=state.expires_at
    )


def redirect_uri(settings: Settings) -> str:
    return settings.public_base_url.rstrip("/") + "/oauth/stripe/callback"


async def _optin_activated(session: AsyncSession, account_id: str) -> bool:
    if _optin_activation_check is None:
        return False
    return await _optin_activation_check(session, account_id)


# --- GET /oauth/stripe/callback ----------------------------------------------------------------


@dataclass(frozen=True)
class CallbackResult:
    """Where to send the merchant; `redirect_url` None means the state was unreadable
    (no trustworthy return URL): answer a plain 400 page."""

    redirect_url: str | None
    account_id: str | None = None
    connection_id: int | None = None


@dataclass(frozen=True)
class _Claimed:
    account_id: str
    mode: str
    return_url: str
    consent: dict[str, Any]


class _Refused(Exception):
    def __init__(self, reason: str, *, retry: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry = retry


def with_query(url: str, **params: str) -> str:
    """`url` with `params` added to its query (existing parameters kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _reason_code(value: str | None, default: str) -> str:
    """Stripe's error code as a reason, if it looks like one (it lands in a URL)."""
    if value and re.fullmatch(r"[a-z][a-z0-9_]{0,63}", value):
        return value
    return default


async def handle_callback(
    session_factory: SessionFactory,
    http: httpx.AsyncClient,
    redis: ArqRedis | None,
    settings: Settings,
    *,
    code: str | None,
    state: str | None,
    error: str | None,
) -> CallbackResult:
    """Check the state, exchange the code, store the connection, start the import."""
    payload = _read_state(settings, state)
    if payload is None:
        log.warning("stripe_callback_unreadable_state")
        return CallbackResult(redirect_url=None)
    nonce, account_id, return_url = payload
    if not return_url_allowed(settings, return_url):  # prefixes may have changed since
        return CallbackResult(redirect_url=None)

    def refused(reason: str, *, retry: bool = False) -> CallbackResult:
        log.info("stripe_connect_refused", account_id=account_id, reason=reason)
        params = {"status": "error", "reason": reason}
        if retry:
            params["retry"] = "true"
        return CallbackResult(redirect_url=with_query(return_url, **params), account_id=account_id)

    try:
        claimed = await _claim_state(session_factory, nonce, account_id)
    except _Refused as exc:
        return refused(exc.reason)

    try:
        if error is not None:
            raise _Refused(_reason_code(error, "stripe_error"))
        if not code:
            raise _Refused("missing_code")
        grant = await _exchange(http, settings, code)
        connection_id = await _store_connection(session_factory, settings, nonce, claimed, grant)
    except _Refused as exc:
        await _record_outcome(session_factory, nonce, exc.reason)
        return refused(exc.reason, retry=exc.retry)

    await enqueue_import(redis, account_id, connection_id)
    log.info("stripe_connected", account_id=account_id, connection_id=connection_id)
    return CallbackResult(
        redirect_url=with_query(return_url, status="connected", account_id=account_id),
        account_id=account_id,
        connection_id=connection_id,
    )


def _read_state(settings: Settings, state: str | None) -> tuple[str, str, str] | None:
    if not state or len(state) > 4096:
        return None
    try:
        payload = crypto.open_sealed(settings, state)
    except crypto.InvalidToken:
        return None
    nonce, account_id, return_url = payload.get("n"), payload.get("a"), payload.get("r")
    if not (isinstance(nonce, str) and isinstance(account_id, str) and isinstance(return_url, str)):
        return None
    return nonce, account_id, return_url


async def _claim_state(session_factory: SessionFactory, nonce: str, account_id: str) -> _Claimed:
    """Mark the state used (committed) or refuse with the reason; single-use holds even
    when two callbacks race (row lock)."""
    async with transaction(session_factory) as session:
        row = await repository.lock_state(session, nonce)
        if row is None or row.account_id != account_id:
            raise _Refused("invalid_state")
        if row.used_at is not None:
            raise _Refused("state_used")
        now = utcnow()
        row.used_at = now
        if now >= row.expires_at:
            row.outcome = "state_expired"
            expired = True
        else:
            expired = False
            claimed = _Claimed(
                account_id=row.account_id,
                mode=row.mode,
                return_url=row.return_url,
                consent={
                    "consent_affirmed_by": row.consent_affirmed_by,
                    "consent_affirmed_at": row.consent_affirmed_at,
                    "consent_client_ip": row.consent_client_ip,
                    "consent_user_agent": row.consent_user_agent,
                },
            )
    if expired:
        raise _Refused("state_expired")
    return claimed


async def _exchange(http: httpx.AsyncClient, settings: Settings, code: str) -> TokenGrant:
    try:
        return await StripeClient(http, settings).exchange_code(code)
    except StripeError as exc:
        log.warning("stripe_code_exchange_refused", code=exc.code, status=exc.status)
        raise _Refused(_reason_code(exc.code, "stripe_error")) from exc
    except StripeUnavailable as exc:
        log.warning("stripe_code_exchange_failed", error=str(exc))
        raise _Refused("stripe_unavailable", retry=True) from exc


async def _store_connection(
    session_factory: SessionFactory,
    settings: Settings,
    nonce: str,
    claimed: _Claimed,
    grant: TokenGrant,
) -> int:
    """Insert the connection (tokens encrypted) and run the connected hooks, in one
    transaction; refuse a Stripe account already connected to another platform account.

    A refused grant is simply dropped, NOT deauthorized: Connect has one authorization per
    Stripe account and platform, so deauthorizing would cut the other account's connection.
    """
    try:
        async with transaction(session_factory) as session:
            account = await session.get(Account, claimed.account_id, with_for_update=True)
            if account is None:
                raise _Refused("account_not_found")
            if await repository.active_connection(session, claimed.account_id) is not None:
                raise _Refused("already_connected")
            holder = await repository.connection_holding_stripe_account(
                session, grant.stripe_user_id
            )
            if holder is not None:
                raise _Refused("stripe_account_in_use")
            now = utcnow()
            connection = StripeConnection(
                account_id=claimed.account_id,
                stripe_account_id=grant.stripe_user_id,
                livemode=grant.livemode,
                mode=claimed.mode,
                status=ConnectionStatus.CONNECTED,
                connected_at=now,
                scope=grant.scope,
                access_token_encrypted=crypto.encrypt(settings, grant.access_token),
                refresh_token_encrypted=crypto.encrypt_optional(settings, grant.refresh_token),
                token_expires_at=_expiry(now, grant.expires_in),
                token_refreshed_at=now,
                **claimed.consent,
            )
            session.add(connection)
            await session.flush()
            # Built-in segment lists are created by the segments feature through this hook
            # (issues 5/6); nothing is created here yet when no hook is registered.
            for hook in _connected_hooks:
                await hook(session, connection)
            state = await session.get(OAuthState, nonce)
            if state is not None:
                state.outcome = "connected"
            connection_id = connection.id
    except IntegrityError as exc:
        # Lost a race on the partial unique indexes: one active connection per platform
        # account and per Stripe account.
        raise _Refused("stripe_account_in_use") from exc
    return connection_id


def _expiry(now: datetime, expires_in: int | None) -> datetime | None:
    return now + timedelta(seconds=expires_in) if expires_in is not None else None


async def _record_outcome(session_factory: SessionFactory, nonce: str, reason: str) -> None:
    async with transaction(session_factory) as session:
        state = await session.get(OAuthState, nonce)
        if state is not None:
            state.outcome = reason[:64]


async def enqueue_import(redis: ArqRedis | None, account_id: str, connection_id: int) -> None:
    """Start the historical import of a new connection (after its commit, by job name;
    the imports feature gives `import_history` its body and a sweeper for lost enqueues)."""
    if redis is None:
        return
    try:
        await redis.enqueue_job(
            IMPORT_HISTORY, account_id, _job_id=import_job_id(account_id, connection_id)
        )
    except Exception as exc:  # Redis down: the connection stands; the import sweeper catches up
        log.warning("import_enqueue_failed", account_id=account_id, error=type(exc).__name__)
