"""POST /v1/accounts/{id}/stripe/connect: the authorize URL, the 409/422 rules, consent evidence."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from sqlalchemy import select

from stripesync.db import SessionFactory
from stripesync.kit.clock import utcnow
from stripesync.models import OAuthState, StripeConnection
from tests.accounts.conftest import connect, start_connect


async def test_authorize_url_carries_what_stripe_needs(
    app_client: httpx.AsyncClient, account: str
) -> None:
    response = await start_connect(app_client, mode="direct")
    assert response.status_code == 201
    url = urlsplit(response.json()["authorize_url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == "https://connect.stripe.com/oauth/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == "ca_test_client"
    assert query["scope"] == "read_only"
    assert query["redirect_uri"] == "http://testserver/oauth/stripe/callback"
    assert len(query["state"]) > 40
    assert account not in query["state"]  # sealed, not readable


async def test_direct_mode_stores_the_consent_affirmation_as_evidence(
    app_client: httpx.AsyncClient, account: str, session_factory: SessionFactory
) -> None:
    before = utcnow()
    assert (
        await start_connect(app_client, mode="direct", affirmed_by="user-42")
    ).status_code == 201
    async with session_factory() as session:
        state = (await session.execute(select(OAuthState))).scalar_one()
    assert state.account_id == account
    assert state.mode == "direct"
    assert state.consent_affirmed_by == "user-42"
    assert state.consent_affirmed_at is not None and state.consent_affirmed_at >= before
    assert state.consent_client_ip == "127.0.0.1"
    assert state.consent_user_agent == "PlatformUI/7.1"
    assert state.expires_at - state.created_at == timedelta(minutes=30)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"prior_consent_affirmed": False}, "body.prior_consent_affirmed"),
        ({"prior_consent_affirmed": None}, "body.prior_consent_affirmed"),
        ({"affirmed_by": None}, "body.affirmed_by"),
    ],
)
async def test_direct_mode_without_affirmation_is_422(
    app_client: httpx.AsyncClient,
    account: str,
    session_factory: SessionFactory,
    extra: dict[str, object],
    field: str,
) -> None:
    response = await start_connect(app_client, mode="direct", **extra)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "prior_consent_required"
    assert response.json()["error"]["details"]["fields"][0]["field"] == field
    async with session_factory() as session:
        assert (await session.execute(select(OAuthState))).first() is None


@pytest.mark.parametrize(
    "return_url",
    [
        "https://evil.example/steal",
        "http://localhost.evil.example/x",
        "http://localhost@evil.example/x",
        "http://127.0.0.1.evil.example/",
        "javascript:alert(1)",
        "//evil.example",
        "ftp://localhost/x",
    ],
)
async def test_return_url_outside_the_allowed_prefixes_is_422(
    app_client: httpx.AsyncClient, account: str, return_url: str
) -> None:
    response = await start_connect(app_client, return_url=return_url)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "return_url_not_allowed"
    assert error["details"]["fields"][0]["field"] == "body.return_url"


@pytest.mark.parametrize(
    "return_url",
    ["http://localhost", "http://localhost:3000/x?y=1", "http://127.0.0.1/cb", "http://localhost/"],
)
async def test_return_urls_under_an_allowed_prefix_are_accepted(
    app_client: httpx.AsyncClient, account: str, return_url: str
) -> None:
    assert (await start_connect(app_client, return_url=return_url)).status_code == 201


async def test_optin_mode_is_409_until_the_optin_email_is_activated(
    app_client: httpx.AsyncClient, account: str, optin_activated: set[str]
) -> None:
    response = await start_connect(app_client, mode="optin")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "optin_email_not_activated"

    optin_activated.add(account)
    assert (await start_connect(app_client, mode="optin")).status_code == 201


async def test_connecting_while_connected_is_409(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    assert (await connect(app_client))["status"] == "connected"
    response = await start_connect(app_client)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "already_connected"
    async with session_factory() as session:
        assert len((await session.execute(select(StripeConnection))).all()) == 1


async def test_connect_for_unknown_account_is_404(app_client: httpx.AsyncClient) -> None:
    response = await start_connect(app_client, "nobody")
    assert response.status_code == 404


async def test_unknown_mode_is_422(app_client: httpx.AsyncClient, account: str) -> None:
    response = await start_connect(app_client, mode="sometimes")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
