"""Two accounts: nothing of one is readable or changeable through the other's paths, and
test-mode events never touch a live connection's data (nor live events a test one's)."""

from __future__ import annotations

from typing import Any

import httpx
import respx
from sqlalchemy import func, select

from stripesync.db import SessionFactory
from stripesync.models import Contact, StripeConnection
from tests.accounts.conftest import put_account, start_connect
from tests.accounts.test_disconnect import connected_as, customer, receive
from tests.conftest import platform_headers
from tests.support import stripe_event


async def contacts_of(factory: SessionFactory, account_id: str) -> list[str]:
    async with factory() as session:
        stmt = select(Contact.email).where(Contact.account_id == account_id).order_by(Contact.email)
        return list((await session.execute(stmt)).scalars())


async def connection_of(factory: SessionFactory, account_id: str) -> StripeConnection:
    async with factory() as session:
        stmt = (
            select(StripeConnection)
            .where(StripeConnection.account_id == account_id)
            .order_by(StripeConnection.id.desc())
        )
        return (await session.execute(stmt)).scalars().first()  # type: ignore[return-value]


async def test_nothing_of_one_account_is_readable_or_changeable_through_the_others_paths(
    app_client: httpx.AsyncClient,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    cc = {"access_token": "cc-a-access", "refresh_token": "cc-a-refresh"}
    await put_account(app_client, "acc_a", name="Alpha Ceramics", cc_credentials=cc)
    await put_account(app_client, "acc_b", name="Beta Books", owner_email="b@beta.example")
    await connected_as(app_client, stripe_oauth, "acc_a", "acct_alpha")
    await connected_as(app_client, stripe_oauth, "acc_b", "acct_beta")
    for n in range(2):
        await receive(app_client, worker_ctx, customer(n, "acct_alpha"))
    await receive(app_client, worker_ctx, customer(9, "acct_beta"))

    # Read: B's dashboard shows B's connection and counts only.
    b = (await app_client.get("/v1/accounts/acc_b", headers=platform_headers)).json()
    assert b["name"] == "Beta Books" and b["stripe"]["stripe_account_id"] == "acct_beta"
    text = str(b)
    assert "acct_alpha" not in text and "Alpha" not in text and "acc_a" not in text
    assert await contacts_of(session_factory, "acc_b") == ["buyer9@acctbeta.example"]

    # Change: B's paths leave A untouched.
    a_before = (await app_client.get("/v1/accounts/acc_a", headers=platform_headers)).json()
    await put_account(app_client, "acc_b", name="Beta Books 2")
    assert (await start_connect(app_client, "acc_b")).status_code == 409  # B's own connection
    delete = await app_client.delete(
        "/v1/accounts/acc_b/stripe", params={"purge": "true"}, headers=platform_headers
    )
    assert delete.status_code == 204
    a_after = (await app_client.get("/v1/accounts/acc_a", headers=platform_headers)).json()
    assert a_after == a_before
    assert (await connection_of(session_factory, "acc_a")).status == "connected"
    assert len(await contacts_of(session_factory, "acc_a")) == 2
    assert await contacts_of(session_factory, "acc_b") == []
    # Deauthorize went out for B's Stripe account only.
    deauthorized = [
        dict(httpx.QueryParams(c.request.content.decode()))["stripe_user_id"]
        for c in stripe_oauth.routes["deauthorize"].calls
    ]
    assert deauthorized == ["acct_beta"]

    # A's events never land in B, even after B disconnected.
    await receive(app_client, worker_ctx, customer(5, "acct_alpha"))
    assert await contacts_of(session_factory, "acc_b") == []
    assert len(await contacts_of(session_factory, "acc_a")) == 3


async def test_test_mode_events_never_touch_a_live_connection_and_back(
    app_client: httpx.AsyncClient,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    await put_account(app_client, "acc_live")
    await put_account(app_client, "acc_test")
    await connected_as(app_client, stripe_oauth, "acc_live", "acct_live", livemode=True)
    await connected_as(app_client, stripe_oauth, "acc_test", "acct_test", livemode=False)

    wrong_mode = [
        customer(1, "acct_live", livemode=False),
        customer(2, "acct_test", livemode=True),
        stripe_event(
            "account.application.deauthorized",
            {"id": "ca_test_client", "object": "application"},
            account="acct_live",
            livemode=False,
        ),
        stripe_event(
            "account.application.deauthorized",
            {"id": "ca_test_client", "object": "application"},
            account="acct_test",
            livemode=True,
        ),
    ]
    for event in wrong_mode:
        row = await receive(app_client, worker_ctx, event)
        assert (row.state, row.ignored_reason) == ("ignored", "livemode_mismatch"), event["type"]

    async with session_factory() as session:
        count = (await session.execute(select(func.count()).select_from(Contact))).scalar_one()
    assert count == 0
    for account_id in ("acc_live", "acc_test"):
        connection = await connection_of(session_factory, account_id)
        assert connection.status == "connected"
        assert connection.last_event_at is None

    # The matching mode is applied.
    assert (
        await receive(app_client, worker_ctx, customer(3, "acct_live", livemode=True))
    ).state == ("processed")
    assert await contacts_of(session_factory, "acc_live") == ["buyer3@acctlive.example"]
    assert await contacts_of(session_factory, "acc_test") == []
