"""Token lifecycle: refresh before expiry, one refresh at a time, the new pair stored first."""

from __future__ import annotations

import asyncio
import base64
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
import time_machine
from arq.connections import ArqRedis
from arq.worker import func

from stripesync.accounts.tokens import TokenUnavailable, cc_access_token, stripe_access_token
from stripesync.clients.cc_auth import CcAuthUnavailable
from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.kit.queue import create_redis
from stripesync.models import Account, StripeConnection
from stripesync.worker import create_worker
from tests.accounts.conftest import CC_TOKEN_URL, TOKEN_URL, grant, put_account

pytestmark = pytest.mark.usefixtures("app_client")


async def cc_account(
    client: httpx.AsyncClient, expires_in: timedelta, account_id: str = "acc_1"
) -> None:
    creds = {
        "access_token": "cc-access-0",
        "refresh_token": "cc-refresh-0",
        "expires_at": (utcnow() + expires_in).isoformat(),
    }
    assert (await put_account(client, account_id, cc_credentials=creds)).status_code in (200, 201)


def rotating_cc_endpoint(router: respx.MockRouter, *, delay: float = 0.0) -> respx.Route:
    """A token endpoint that rotates: refresh token n gives access n+1 and refresh n+1."""

    async def answer(request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        n = int(form["refresh_token"].rsplit("-", 1)[1])
        await asyncio.sleep(delay)
        return httpx.Response(
            200,
            json={
                "access_token": f"cc-access-{n + 1}",
                "refresh_token": f"cc-refresh-{n + 1}",
                "token_type": "Bearer",
                "expires_in": 86400,
            },
        )

    return router.post(CC_TOKEN_URL).mock(side_effect=answer)


async def stored_account(factory: SessionFactory, account_id: str = "acc_1") -> Account:
    async with factory() as session:
        account = await session.get(Account, account_id)
    assert account is not None
    return account


async def test_fresh_cc_token_is_used_without_calling_the_token_endpoint(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(hours=23))
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = rotating_cc_endpoint(router)
        async with httpx.AsyncClient() as http:
            token = await cc_access_token(session_factory, http, settings, "acc_1")
    assert token == "cc-access-0"
    assert not route.called


async def test_cc_token_near_expiry_is_refreshed_with_basic_auth_and_the_new_pair_stored(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(minutes=2))
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = rotating_cc_endpoint(router)
        async with httpx.AsyncClient() as http:
            token = await cc_access_token(session_factory, http, settings, "acc_1")
    assert token == "cc-access-1"
    request = route.calls.last.request
    assert (
        request.headers["authorization"]
        == "Basic " + base64.b64encode(b"cc-client:cc-secret").decode()
    )
    assert dict(httpx.QueryParams(request.content.decode())) == {
        "grant_type": "refresh_token",
        "refresh_token": "cc-refresh-0",
    }
    account = await stored_account(session_factory)
    assert account.cc_access_token_encrypted is not None
    assert account.cc_refresh_token_encrypted is not None
    assert crypto.decrypt(settings, account.cc_access_token_encrypted) == "cc-access-1"
    assert crypto.decrypt(settings, account.cc_refresh_token_encrypted) == "cc-refresh-1"
    assert account.cc_token_expires_at is not None
    assert (
        timedelta(hours=23, minutes=59)
        < account.cc_token_expires_at - utcnow()
        <= timedelta(hours=24)
    )


async def test_rotated_refresh_token_is_the_one_used_next_time(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(minutes=1))
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = rotating_cc_endpoint(router)
        async with httpx.AsyncClient() as http:
            assert await cc_access_token(session_factory, http, settings, "acc_1") == "cc-access-1"
            with time_machine.travel(utcnow() + timedelta(hours=23, minutes=58), tick=False):
                assert await cc_access_token(session_factory, http, settings, "acc_1") == (
                    "cc-access-2"
                )
    sent = [
        dict(httpx.QueryParams(c.request.content.decode()))["refresh_token"] for c in route.calls
    ]
    assert sent == ["cc-refresh-0", "cc-refresh-1"]


async def needs_cc_token(ctx: dict[str, Any], account_id: str) -> str:
    """A job needing a fresh Constant Contact token, as the sync engine's jobs do."""
    token = await cc_access_token(ctx["session_factory"], ctx["http"], ctx["settings"], account_id)
    await ctx["redis"].rpush("test:tokens-seen", token)
    return token


async def test_ten_concurrent_jobs_needing_a_fresh_token_make_exactly_one_refresh(
    app_client: httpx.AsyncClient, settings: Settings, redis_url: str
) -> None:
    await cc_account(app_client, timedelta(minutes=1))
    redis: ArqRedis = create_redis(redis_url)
    for i in range(10):
        await redis.enqueue_job("needs_cc_token", "acc_1", _job_id=f"needs-token-{i}")
    worker = create_worker(
        settings,
        burst=True,
        poll_delay=0.05,
        max_jobs=10,
        functions=[func(needs_cc_token, name="needs_cc_token")],
        cron_jobs=[],
    )
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        # Slow endpoint: every job is waiting on the lock while the one refresh is in flight.
        route = rotating_cc_endpoint(router, delay=0.3)
        try:
            await worker.main()
        finally:
            await worker.close()
    seen = [t.decode() for t in await redis.lrange("test:tokens-seen", 0, -1)]
    await redis.aclose()
    assert worker.jobs_complete == 10 and worker.jobs_failed == 0
    assert route.call_count == 1
    assert seen == ["cc-access-1"] * 10


async def test_forced_refresh_after_a_401_happens_once_for_many_callers(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(hours=20))
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = rotating_cc_endpoint(router, delay=0.1)
        async with httpx.AsyncClient() as http:
            tokens = await asyncio.gather(
                *(
                    cc_access_token(session_factory, http, settings, "acc_1", force_refresh=True)
                    for _ in range(5)
                )
            )
    assert tokens == ["cc-access-1"] * 5
    assert route.call_count == 1


async def test_refused_refresh_is_recorded_and_not_retried_until_new_credentials(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(minutes=1))
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = router.post(CC_TOKEN_URL).respond(
            400,
            json={"error": "invalid_grant", "error_description": "The refresh token is invalid"},
        )
        async with httpx.AsyncClient() as http:
            with pytest.raises(TokenUnavailable):
                await cc_access_token(session_factory, http, settings, "acc_1")
            with pytest.raises(TokenUnavailable):
                await cc_access_token(session_factory, http, settings, "acc_1")
    assert route.call_count == 1
    account = await stored_account(session_factory)
    assert account.cc_token_error == "refresh refused: invalid_grant"
    shown = (await put_account(app_client)).json()["cc_credentials"]
    assert shown["error"] == "refresh refused: invalid_grant"

    await cc_account(app_client, timedelta(hours=23))
    assert (await stored_account(session_factory)).cc_token_error is None


async def test_token_endpoint_down_keeps_the_stored_pair(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await cc_account(app_client, timedelta(minutes=1))
    before = await stored_account(session_factory)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        router.post(CC_TOKEN_URL).respond(503)
        async with httpx.AsyncClient() as http:
            with pytest.raises(CcAuthUnavailable):
                await cc_access_token(session_factory, http, settings, "acc_1")
    after = await stored_account(session_factory)
    assert after.cc_refresh_token_encrypted == before.cc_refresh_token_encrypted
    assert after.cc_token_error is None


async def test_account_without_cc_credentials_has_no_token(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    await put_account(app_client)
    async with httpx.AsyncClient() as http:
        with pytest.raises(TokenUnavailable):
            await cc_access_token(session_factory, http, settings, "acc_1")
        with pytest.raises(TokenUnavailable):
            await cc_access_token(session_factory, http, settings, "nobody")


# --- Stripe connection tokens ------------------------------------------------------------------


async def stripe_connection(
    factory: SessionFactory, settings: Settings, *, expires_in: timedelta | None
) -> None:
    async with factory() as session, session.begin():
        session.add(Account(id="acc_1", name="Blue Fern", owner_email="o@bluefern.example"))
        await session.flush()
        session.add(
            StripeConnection(
                account_id="acc_1",
                stripe_account_id="acct_1",
                livemode=False,
                mode="direct",
                access_token_encrypted=crypto.encrypt(settings, "stripe-access-0"),
                refresh_token_encrypted=crypto.encrypt(settings, "stripe-refresh-0"),
                token_expires_at=utcnow() + expires_in if expires_in is not None else None,
            )
        )


async def test_classic_connect_token_never_needs_a_refresh(
    session_factory: SessionFactory, settings: Settings
) -> None:
    await stripe_connection(session_factory, settings, expires_in=None)
    with respx.mock(assert_all_mocked=True):
        async with httpx.AsyncClient() as http:
            assert await stripe_access_token(session_factory, http, settings, "acc_1") == (
                "stripe-access-0"
            )


async def test_expiring_stripe_token_is_refreshed_once_by_concurrent_callers(
    session_factory: SessionFactory, settings: Settings
) -> None:
    await stripe_connection(session_factory, settings, expires_in=timedelta(seconds=30))

    async def answer(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.2)
        return httpx.Response(
            200,
            json=grant(
                "acct_1",
                access_token="stripe-access-1",
                refresh_token="stripe-refresh-1",
                expires_in=3600,
            ),
        )

    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        route = router.post(TOKEN_URL).mock(side_effect=answer)
        async with httpx.AsyncClient() as http:
            tokens = await asyncio.gather(
                *(stripe_access_token(session_factory, http, settings, "acc_1") for _ in range(8))
            )
    assert tokens == ["stripe-access-1"] * 8
    assert route.call_count == 1
    form = dict(httpx.QueryParams(route.calls.last.request.content.decode()))
    assert form == {"grant_type": "refresh_token", "refresh_token": "stripe-refresh-0"}
    async with session_factory() as session:
        connection = await session.get(StripeConnection, 1)
    assert connection is not None and connection.refresh_token_encrypted is not None
    assert crypto.decrypt(settings, connection.refresh_token_encrypted) == "stripe-refresh-1"
    assert connection.token_expires_at is not None
    assert connection.token_expires_at - utcnow() > timedelta(minutes=59)


async def test_expires_in_on_the_code_exchange_sets_the_connection_expiry(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    from tests.accounts.conftest import authorize, callback

    await put_account(app_client)
    with respx.mock(assert_all_mocked=True, assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(200, json=grant(expires_in=3600))
        await callback(app_client, code="c", state=await authorize(app_client))
    async with session_factory() as session:
        connection = await session.get(StripeConnection, 1)
    assert connection is not None and connection.token_expires_at is not None
    assert timedelta(minutes=59) < connection.token_expires_at - utcnow() <= timedelta(hours=1)
