"""GET /oauth/stripe/callback: state checks, the code exchange, the connection, redirects."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

import httpx
import pytest
import respx
import time_machine
from sqlalchemy import select

from stripesync.accounts.tasks import clean_oauth_states
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.models import OAuthState, StripeConnection
from tests.accounts.conftest import (
    RETURN_URL,
    TOKEN_URL,
    authorize,
    callback,
    grant,
    put_account,
    redirect_params,
)
from tests.conftest import make_settings, platform_headers


async def connections(factory: SessionFactory) -> list[StripeConnection]:
    async with factory() as session:
        rows = await session.execute(select(StripeConnection).order_by(StripeConnection.id))
        return list(rows.scalars())


async def queued_job_ids(app_client: httpx.AsyncClient) -> list[str]:
    """Queued historical imports (other features queue their own jobs on connect too)."""
    redis = app_client.app.state.redis  # type: ignore[attr-defined]
    return [j.job_id for j in await redis.queued_jobs() if j.job_id.startswith("import:")]


async def test_successful_callback_stores_the_connection_and_starts_the_import(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    settings: Settings,
) -> None:
    stripe_oauth.routes["token"].respond(200, json=grant("acct_bluefern", livemode=True))
    state = await authorize(app_client, mode="direct", affirmed_by="user-42")

    response = await callback(app_client, code="ac_good_code", state=state)

    location, params = redirect_params(response)
    assert location == RETURN_URL
    assert params == {"status": "connected", "account_id": account}
    exchange = stripe_oauth.routes["token"].calls.last.request
    assert exchange.headers["authorization"].startswith("Basic ")  # the platform secret key
    assert dict(httpx.QueryParams(exchange.content.decode())) == {
        "grant_type": "authorization_code",
        "code": "ac_good_code",
    }
    [connection] = await connections(session_factory)
    assert connection.account_id == account
    assert connection.stripe_account_id == "acct_bluefern"
    assert connection.livemode is True
    assert connection.mode == "direct"
    assert connection.status == "connected"
    assert connection.scope == "read_only"
    assert connection.consent_affirmed_by == "user-42"
    assert connection.consent_client_ip == "127.0.0.1"
    assert connection.consent_user_agent == "PlatformUI/7.1"
    assert connection.access_token_encrypted is not None
    assert "sk_live_connected" not in connection.access_token_encrypted
    assert crypto.decrypt(settings, connection.access_token_encrypted) == (
        "sk_live_connected_access_secret"
    )
    assert connection.token_expires_at is None  # classic Connect tokens do not expire
    assert await queued_job_ids(app_client) == [f"import:{account}:{connection.id}"]

    dashboard = (await app_client.get(f"/v1/accounts/{account}", headers=platform_headers)).json()
    assert dashboard["stripe"]["status"] == "connected"
    assert dashboard["stripe"]["stripe_account_id"] == "acct_bluefern"
    assert dashboard["stripe"]["livemode"] is True
    assert dashboard["stripe"]["mode"] == "direct"
    assert dashboard["stripe"]["connected_at"] is not None
    assert dashboard["stripe"]["last_event_at"] is None


async def test_return_url_query_is_kept_on_the_redirect(
    app_client: httpx.AsyncClient, account: str, stripe_oauth: respx.MockRouter
) -> None:
    state = await authorize(app_client, return_url="http://localhost:3000/cb?tab=stripe")
    location, params = redirect_params(await callback(app_client, code="c", state=state))
    assert location == "http://localhost:3000/cb"
    assert params == {"tab": "stripe", "status": "connected", "account_id": account}


async def assert_refused(
    response: httpx.Response, reason: str, factory: SessionFactory, *, retry: bool = False
) -> None:
    location, params = redirect_params(response)
    assert location == RETURN_URL
    expected = {"status": "error", "reason": reason}
    if retry:
        expected["retry"] = "true"
    assert params == expected
    assert await connections(factory) == []  # nothing half-made


async def test_merchant_declining_at_stripe_is_sent_back_with_the_reason(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    state = await authorize(app_client)
    response = await callback(
        app_client,
        error="access_denied",
        error_description="The user denied your request",
        state=state,
    )
    await assert_refused(response, "access_denied", session_factory)
    assert not stripe_oauth.routes["token"].called
    dashboard = (await app_client.get(f"/v1/accounts/{account}", headers=platform_headers)).json()
    assert dashboard["stripe"]["status"] == "error"
    assert dashboard["stripe"]["error"] == "access_denied"


async def test_invalid_grant_is_sent_back_without_a_connection(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    stripe_oauth.routes["token"].respond(
        400,
        json={"error": "invalid_grant", "error_description": "Authorization code expired"},
    )
    state = await authorize(app_client)
    response = await callback(app_client, code="ac_used", state=state)
    await assert_refused(response, "invalid_grant", session_factory)
    assert await queued_job_ids(app_client) == []


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500, json={"error": {"message": "boom"}}),
        httpx.Response(503, text="upstream unavailable"),
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
    ],
    ids=["500", "503-not-json", "network", "timeout"],
)
async def test_stripe_down_tells_the_merchant_to_retry_and_leaves_nothing_half_made(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    failure: httpx.Response | Exception,
) -> None:
    if isinstance(failure, Exception):
        stripe_oauth.routes["token"].side_effect = failure
    else:
        stripe_oauth.routes["token"].return_value = failure
    state = await authorize(app_client)
    response = await callback(app_client, code="ac_code", state=state)
    await assert_refused(response, "stripe_unavailable", session_factory, retry=True)
    assert await queued_job_ids(app_client) == []

    # Retrying (a new connect) works once Stripe is back.
    stripe_oauth.routes["token"].side_effect = None
    stripe_oauth.routes["token"].return_value = httpx.Response(200, json=grant())
    state = await authorize(app_client)
    _, params = redirect_params(await callback(app_client, code="ac_code2", state=state))
    assert params["status"] == "connected"


async def test_a_state_works_only_once(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    state = await authorize(app_client)
    assert redirect_params(await callback(app_client, code="c1", state=state))[1]["status"] == (
        "connected"
    )
    second = await callback(app_client, code="c2", state=state)
    _, params = redirect_params(second)
    assert params == {"status": "error", "reason": "state_used"}
    assert stripe_oauth.routes["token"].call_count == 1
    assert len(await connections(session_factory)) == 1


async def test_a_state_used_by_a_failed_attempt_cannot_be_replayed(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    state = await authorize(app_client)
    await callback(app_client, error="access_denied", state=state)
    response = await callback(app_client, code="c", state=state)
    await assert_refused(response, "state_used", session_factory)
    assert not stripe_oauth.routes["token"].called


async def test_a_state_expires_after_30_minutes(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    start = utcnow()
    with time_machine.travel(start, tick=False):
        state = await authorize(app_client)
    with time_machine.travel(start + timedelta(minutes=29, seconds=59), tick=False):
        fresh = await authorize(app_client)  # issued later, used in time below
    with time_machine.travel(start + timedelta(minutes=30, seconds=1), tick=False):
        response = await callback(app_client, code="c", state=state)
        await assert_refused(response, "state_expired", session_factory)
        assert not stripe_oauth.routes["token"].called
        _, params = redirect_params(await callback(app_client, code="c", state=fresh))
    assert params["status"] == "connected"


@pytest.mark.parametrize(
    "state",
    ["", "not-a-state", "gAAAAABforgedforgedforgedforged==", "x" * 5000],
    ids=["empty", "garbage", "fernet-looking", "huge"],
)
async def test_forged_or_unreadable_state_gets_a_plain_400_page(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    state: str,
) -> None:
    response = await callback(app_client, code="c", state=state)
    assert response.status_code in (400, 422)
    assert "location" not in response.headers
    if response.status_code == 400:
        assert response.headers["content-type"].startswith("text/html")
        assert "not valid" in response.text
    assert not stripe_oauth.routes["token"].called
    assert await connections(session_factory) == []


async def test_missing_state_gets_a_plain_400_page(
    app_client: httpx.AsyncClient, stripe_oauth: respx.MockRouter
) -> None:
    response = await callback(app_client, code="c")
    assert response.status_code == 400
    assert "location" not in response.headers


async def test_state_sealed_with_another_key_is_forged(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    settings: Settings,
    session_factory: SessionFactory,
) -> None:
    from cryptography.fernet import Fernet

    genuine = await authorize(app_client)
    payload = crypto.open_sealed(settings, genuine)
    assert settings.database_url and settings.redis_url
    other = make_settings(
        settings.database_url, settings.redis_url, encryption_keys=Fernet.generate_key().decode()
    )
    forged = crypto.seal(other, payload)  # same content, attacker's key

    response = await callback(app_client, code="c", state=forged)
    assert response.status_code == 400
    assert not stripe_oauth.routes["token"].called


async def test_state_bound_to_another_account_is_refused(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    settings: Settings,
    session_factory: SessionFactory,
) -> None:
    await put_account(app_client, "acc_2")
    genuine = await authorize(app_client, "acc_1")
    payload = crypto.open_sealed(settings, genuine)
    # A state naming account 2 but pointing at account 1's attempt (as if the binding
    # were swapped): the server side row says acc_1, so it is refused.
    swapped = crypto.seal(settings, {**payload, "a": "acc_2"})

    response = await callback(app_client, code="c", state=swapped)
    await assert_refused(response, "invalid_state", session_factory)
    assert not stripe_oauth.routes["token"].called
    # The genuine state still works for its own account only.
    _, params = redirect_params(await callback(app_client, code="c", state=genuine))
    assert params == {"status": "connected", "account_id": "acc_1"}
    [connection] = await connections(session_factory)
    assert connection.account_id == "acc_1"


async def test_stripe_account_connected_to_another_platform_account_is_refused(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    await put_account(app_client, "acc_2")
    stripe_oauth.routes["token"].respond(200, json=grant("acct_shared"))
    assert (
        redirect_params(await callback(app_client, code="c", state=await authorize(app_client)))[1][
            "status"
        ]
        == "connected"
    )

    response = await callback(app_client, code="c2", state=await authorize(app_client, "acc_2"))
    _, params = redirect_params(response)
    assert params == {"status": "error", "reason": "stripe_account_in_use"}
    rows = await connections(session_factory)
    assert [(c.account_id, c.status) for c in rows] == [("acc_1", "connected")]
    # Deauthorizing would cut account 1's connection: it is not done.
    assert not stripe_oauth.routes["deauthorize"].called


async def test_state_outcome_is_recorded(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    state = await authorize(app_client)
    await callback(app_client, code="c", state=state)
    async with session_factory() as session:
        row = (await session.execute(select(OAuthState))).scalar_one()
    assert row.used_at is not None and row.outcome == "connected"


async def test_pending_attempt_shows_on_the_dashboard(
    app_client: httpx.AsyncClient, account: str
) -> None:
    await authorize(app_client, mode="direct")
    dashboard = (await app_client.get(f"/v1/accounts/{account}", headers=platform_headers)).json()
    assert dashboard["stripe"]["status"] == "pending"
    assert dashboard["stripe"]["mode"] == "direct"


async def test_concurrent_callbacks_with_one_state_connect_once(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    import asyncio

    state = await authorize(app_client)
    responses = await asyncio.gather(
        *(callback(app_client, code=f"c{i}", state=state) for i in range(5))
    )
    statuses = sorted(redirect_params(r)[1]["status"] for r in responses)
    assert statuses == ["connected", "error", "error", "error", "error"]
    assert stripe_oauth.routes["token"].call_count == 1
    assert len(await connections(session_factory)) == 1


async def test_token_url_is_only_called_for_the_configured_url(
    app_client: httpx.AsyncClient, account: str, stripe_oauth: respx.MockRouter
) -> None:
    # Sanity of the fake: the code exchange goes to the configured token URL.
    await callback(app_client, code="c", state=await authorize(app_client))
    assert str(stripe_oauth.routes["token"].calls.last.request.url) == TOKEN_URL


async def test_spent_states_are_deleted_a_day_after_expiry_but_each_accounts_latest_stays(
    app_client: httpx.AsyncClient,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    for account_id in ("acc_1", "acc_2"):
        assert (await put_account(app_client, account_id)).status_code == 201
    start = utcnow()
    with time_machine.travel(start, tick=False):
        used = await authorize(app_client, "acc_1")
        await callback(app_client, error="access_denied", state=used)
        await authorize(app_client, "acc_1")  # never used
        await authorize(app_client, "acc_2")  # acc_2's only, hence latest
    with time_machine.travel(start + timedelta(hours=2), tick=False):
        recent = await authorize(app_client, "acc_1")  # acc_1's latest

    async def states() -> dict[str, int]:
        async with transaction(session_factory) as session:
            rows = (await session.execute(select(OAuthState.account_id))).scalars().all()
        return dict(Counter(rows))

    # Expired less than a day ago: kept.
    with time_machine.travel(start + timedelta(hours=23), tick=False):
        assert await clean_oauth_states(worker_ctx) == 0
    assert await states() == {"acc_1": 3, "acc_2": 1}
    # A day after expiry: acc_1's two old states go; both accounts' latest stay.
    with time_machine.travel(start + timedelta(days=1, minutes=31), tick=False):
        assert await clean_oauth_states(worker_ctx) == 2
        assert await states() == {"acc_1": 1, "acc_2": 1}
        # A callback naming a deleted state is refused, never a 500.
        await assert_refused(
            await callback(app_client, code="c", state=used), "invalid_state", session_factory
        )
        # The latest one kept still answers for itself.
        response = await callback(app_client, code="c", state=recent)
        await assert_refused(response, "state_expired", session_factory)
    assert not stripe_oauth.routes["token"].called
