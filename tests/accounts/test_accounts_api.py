"""PUT/GET /v1/accounts/{account_id}: platform auth, validation, secrets never echoed."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.kit import crypto
from stripesync.models import Account
from tests.accounts.conftest import put_account
from tests.conftest import ops_headers, platform_headers

CC = {
    "access_token": "cc-access-token-secret-1",
    "refresh_token": "cc-refresh-token-secret-1",
    "expires_at": "2026-11-27T10:00:00Z",
}


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic abc"}, ops_headers],
    ids=["missing", "wrong", "not-bearer", "ops-token"],
)
async def test_account_routes_need_the_platform_token(
    app_client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    for method, path in [
        ("PUT", "/v1/accounts/acc_1"),
        ("GET", "/v1/accounts/acc_1"),
        ("POST", "/v1/accounts/acc_1/stripe/connect"),
        ("DELETE", "/v1/accounts/acc_1/stripe"),
    ]:
        response = await app_client.request(method, path, headers=headers, json={})
        assert response.status_code == 401, (method, path)
        assert response.json()["error"]["code"] == "unauthorized"


async def test_put_creates_then_updates_and_never_echoes_secrets(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, settings: Settings
) -> None:
    created = await put_account(app_client, cc_credentials=CC)
    assert created.status_code == 201
    body = created.json()
    assert body["account_id"] == "acc_1"
    assert body["name"] == "Blue Fern Pottery"
    assert body["cc_credentials"] == {"expires_at": "2026-11-27T10:00:00Z", "error": None}
    assert "cc-access-token" not in created.text and "cc-refresh-token" not in created.text

    updated = await put_account(app_client, name="Blue Fern Ceramics")
    assert updated.status_code == 200
    assert updated.json()["name"] == "Blue Fern Ceramics"
    # Omitted credentials are kept.
    assert updated.json()["cc_credentials"]["expires_at"] == "2026-11-27T10:00:00Z"

    async with session_factory() as session:
        account = (await session.execute(select(Account))).scalar_one()
    assert account.cc_access_token_encrypted is not None
    assert "cc-access-token" not in account.cc_access_token_encrypted
    assert crypto.decrypt(settings, account.cc_access_token_encrypted) == CC["access_token"]


@pytest.mark.parametrize("account_id", ["a" * 65, "has space", "semi;colon", "dot.ted", "é"])
async def test_invalid_account_ids_are_422(app_client: httpx.AsyncClient, account_id: str) -> None:
    for response in (
        await app_client.get(f"/v1/accounts/{account_id}", headers=platform_headers),
        await put_account(app_client, account_id),
    ):
        assert response.status_code == 422
        error = response.json()["error"]
        assert error["code"] == "validation_error"
        assert error["details"]["fields"][0]["field"] == "path.account_id"


async def test_put_validates_fields_with_their_names(app_client: httpx.AsyncClient) -> None:
    response = await put_account(app_client, owner_email="not-an-email", name="")
    assert response.status_code == 422
    fields = {f["field"] for f in response.json()["error"]["details"]["fields"]}
    assert {"body.owner_email", "body.name"} <= fields


async def test_get_unknown_account_is_404(app_client: httpx.AsyncClient) -> None:
    response = await app_client.get("/v1/accounts/nobody", headers=platform_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "account_not_found"


async def test_dashboard_of_a_new_account(app_client: httpx.AsyncClient) -> None:
    await put_account(app_client)
    response = await app_client.get("/v1/accounts/acc_1", headers=platform_headers)
    assert response.status_code == 200
    body = response.json()
    segments = body.pop("segments")
    # The nine built-ins of segments.md, empty until contacts arrive.
    assert [(s["key"], s["name"], s["member_count"]) for s in segments][:3] == [
        ("all", "Stripe - All Customers", 0),
        ("prospects", "Stripe - Prospects", 0),
        ("first_time", "Stripe - First-time Customers", 0),
    ]
    assert len(segments) == 9 and all(s["member_count"] == 0 for s in segments)
    assert body == {
        "account_id": "acc_1",
        "name": "Blue Fern Pottery",
        "owner_email": "owner@bluefern.example",
        "stripe": {
            "status": "not_connected",
            "stripe_account_id": None,
            "livemode": None,
            "mode": None,
            "connected_at": None,
            "last_event_at": None,
            "revoked_at": None,
            "error": None,
        },
        "import": None,
        "optin": {"sent": 0, "confirmed": 0, "declined": 0, "pending": 0},
    }
