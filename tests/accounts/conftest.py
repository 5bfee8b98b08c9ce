"""Fixtures for accounts tests: accounts made through the API, Stripe OAuth faked with respx."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import respx
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts import oauth
from tests.conftest import platform_headers

TOKEN_URL = "https://connect.stripe.com/oauth/token"
DEAUTHORIZE_URL = "https://connect.stripe.com/oauth/deauthorize"
CC_TOKEN_URL = "https://authz.constantcontact.com/oauth2/default/v1/token"
RETURN_URL = "http://localhost:3000/integrations/stripe"


def grant(
    stripe_user_id: str = "acct_merchant_1",
    *,
    access_token: str = "sk_live_connected_access_secret",
    refresh_token: str = "rt_connected_refresh_secret",
    livemode: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A token response as Stripe's OAuth token endpoint sends it."""
    return {
        "access_token": access_token,
        "refresh_token": refresh_token,
        "token_type": "bearer",
        "stripe_user_id": stripe_user_id,
        "stripe_publishable_key": "pk_test_publishable",
        "livemode": livemode,
        "scope": "read_only",
        **extra,
    }


@pytest.fixture
def stripe_oauth() -> Iterator[respx.MockRouter]:
    """Stripe's OAuth endpoints, faked; any other outside call fails the test."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.post(TOKEN_URL, name="token").respond(200, json=grant())
        router.post(DEAUTHORIZE_URL, name="deauthorize").respond(
            200, json={"stripe_user_id": "acct_merchant_1"}
        )
        yield router


@pytest.fixture
def optin_activated() -> Iterator[set[str]]:
    """Accounts whose opt-in email counts as activated (the opt-in feature's seam)."""
    activated: set[str] = set()

    async def check(session: AsyncSession, account_id: str) -> bool:
        return account_id in activated

    previous = oauth._optin_activation_check
    oauth.set_optin_activation_check(check)
    yield activated
    oauth._optin_activation_check = previous


async def put_account(
    client: httpx.AsyncClient, account_id: str = "acc_1", **fields: Any
) -> httpx.Response:
    body: dict[str, Any] = {
        "name": "Blue Fern Pottery",
        "owner_email": "owner@bluefern.example",
        "postal_address": "12 Kiln Lane, Portland OR 97201, USA",
    }
    body.update(fields)
    return await client.put(f"/v1/accounts/{account_id}", json=body, headers=platform_headers)


async def start_connect(
    client: httpx.AsyncClient,
    account_id: str = "acc_1",
    *,
    mode: str = "direct",
    return_url: str = RETURN_URL,
    **extra: Any,
) -> httpx.Response:
    body: dict[str, Any] = {"mode": mode, "return_url": return_url, **extra}
    if mode == "direct":
        body.setdefault("prior_consent_affirmed", True)
        body.setdefault("affirmed_by", "user-42")
    return await client.post(
        f"/v1/accounts/{account_id}/stripe/connect",
        json=body,
        headers={**platform_headers, "User-Agent": "PlatformUI/7.1"},
    )


def state_of(authorize_url: str) -> str:
    return parse_qs(urlsplit(authorize_url).query)["state"][0]


async def authorize(client: httpx.AsyncClient, account_id: str = "acc_1", **kw: Any) -> str:
    """Start connecting and answer the `state` Stripe would send back."""
    response = await start_connect(client, account_id, **kw)
    assert response.status_code == 201, response.text
    return state_of(response.json()["authorize_url"])


async def callback(client: httpx.AsyncClient, **params: str) -> httpx.Response:
    return await client.get("/oauth/stripe/callback", params=params)


def redirect_params(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """(location without query, its query parameters) of a 303."""
    assert response.status_code == 303, response.text
    parts = urlsplit(response.headers["location"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return parts._replace(query="").geturl(), query


async def connect(
    client: httpx.AsyncClient, account_id: str = "acc_1", **kw: Any
) -> dict[str, str]:
    """The whole happy path (account must exist, Stripe faked): the redirect's parameters."""
    state = await authorize(client, account_id, **kw)
    _, params = redirect_params(await callback(client, code="ac_code", state=state))
    return params


@pytest.fixture
async def account(app_client: httpx.AsyncClient) -> AsyncIterator[str]:
    response = await put_account(app_client)
    assert response.status_code == 201
    yield "acc_1"
