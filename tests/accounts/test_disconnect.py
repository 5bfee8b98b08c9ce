"""DELETE /v1/accounts/{id}/stripe, the deauthorized webhook, purge and reconnecting."""

from __future__ import annotations

import time
from typing import Any

import httpx
import respx
from sqlalchemy import func, select

from stripesync.accounts import repository
from stripesync.accounts.oauth import import_job_id
from stripesync.db import SessionFactory
from stripesync.models import Base, StripeConnection, StripeEvent
from stripesync.webhooks.tasks import process_event
from tests.accounts.conftest import connect, grant, put_account
from tests.conftest import platform_headers
from tests.support import deliver, stripe_event


async def connected_as(
    client: httpx.AsyncClient,
    router: respx.MockRouter,
    account_id: str,
    stripe_account: str,
    *,
    livemode: bool = False,
) -> None:
    router.routes["token"].respond(200, json=grant(stripe_account, livemode=livemode))
    assert (await connect(client, account_id))["status"] == "connected"


async def receive(
    client: httpx.AsyncClient, ctx: dict[str, Any], event: dict[str, Any]
) -> StripeEvent:
    """Deliver a signed event and process it as the worker does; the stored row after."""
    assert (await deliver(client, event)).status_code == 200
    await client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    await process_event(ctx, event["id"])
    async with ctx["session_factory"]() as session:
        row = await session.get(StripeEvent, event["id"])
    assert row is not None
    return row


def customer(n: int, account: str, *, livemode: bool = False) -> dict[str, Any]:
    return stripe_event(
        "customer.created",
        {
            "id": f"cus_{account}_{n}",
            "object": "customer",
            "email": f"buyer{n}@{account.replace('_', '')}.example",
            "name": f"Buyer {n}",
            "created": int(time.time()) - 3600,
            "livemode": livemode,
            "metadata": {},
            "address": None,
        },
        account=account,
        livemode=livemode,
    )


def charge(account: str, customer_id: str) -> dict[str, Any]:
    return stripe_event(
        "charge.succeeded",
        {
            "id": f"ch_{account}",
            "object": "charge",
            "customer": customer_id,
            "amount": 1999,
            "amount_refunded": 0,
            "currency": "usd",
            "status": "succeeded",
            "paid": True,
            "captured": True,
            "refunded": False,
            "created": int(time.time()) - 60,
            "livemode": False,
            "billing_details": {"email": None, "name": None, "address": None},
            "receipt_email": None,
            "payment_intent": None,
            "invoice": None,
            "metadata": {},
        },
        account=account,
    )


async def connection_rows(factory: SessionFactory) -> list[StripeConnection]:
    async with factory() as session:
        result = await session.execute(select(StripeConnection).order_by(StripeConnection.id))
        return list(result.scalars())


async def disconnect(client: httpx.AsyncClient, account_id: str = "acc_1", **params: str) -> int:
    response = await client.delete(
        f"/v1/accounts/{account_id}/stripe", params=params, headers=platform_headers
    )
    return response.status_code


async def test_disconnect_revokes_deauthorizes_and_forgets_the_tokens(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    assert await disconnect(app_client) == 204

    [connection] = await connection_rows(session_factory)
    assert connection.status == "revoked" and connection.revoked_at is not None
    assert connection.access_token_encrypted is None
    assert connection.refresh_token_encrypted is None
    form = dict(
        httpx.QueryParams(stripe_oauth.routes["deauthorize"].calls.last.request.content.decode())
    )
    assert form == {"client_id": "ca_test_client", "stripe_user_id": "acct_bluefern"}
    dashboard = (await app_client.get(f"/v1/accounts/{account}", headers=platform_headers)).json()
    assert dashboard["stripe"]["status"] == "revoked"
    assert dashboard["stripe"]["stripe_account_id"] == "acct_bluefern"


async def test_disconnect_stands_when_stripe_deauthorize_fails(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    stripe_oauth.routes["deauthorize"].side_effect = httpx.ConnectError("down")
    assert await disconnect(app_client) == 204
    assert [c.status for c in await connection_rows(session_factory)] == ["revoked"]

    stripe_oauth.routes["deauthorize"].side_effect = None
    stripe_oauth.routes["deauthorize"].return_value = httpx.Response(
        401, json={"error": "invalid_client", "error_description": "not connected"}
    )
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    assert await disconnect(app_client) == 204
    assert [c.status for c in await connection_rows(session_factory)] == ["revoked", "revoked"]


async def test_disconnect_cancels_the_queued_import(
    app_client: httpx.AsyncClient, account: str, stripe_oauth: respx.MockRouter
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    redis = app_client.app.state.redis  # type: ignore[attr-defined]

    async def imports() -> list[str]:
        return [j.job_id for j in await redis.queued_jobs() if j.job_id.startswith("import:")]

    assert await imports() == [import_job_id(account, 1)]
    assert await disconnect(app_client) == 204
    assert await imports() == []
    assert await redis.exists(f"arq:job:{import_job_id(account, 1)}") == 0


async def test_events_after_disconnect_are_ignored(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    worker_ctx: dict[str, Any],
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    before = await receive(app_client, worker_ctx, customer(1, "acct_bluefern"))
    assert before.state == "processed"

    assert await disconnect(app_client) == 204
    after = await receive(app_client, worker_ctx, customer(2, "acct_bluefern"))
    assert after.state == "ignored" and after.ignored_reason == "unknown_account"


async def test_disconnect_of_an_unconnected_account_is_a_harmless_204(
    app_client: httpx.AsyncClient, account: str, stripe_oauth: respx.MockRouter
) -> None:
    assert await disconnect(app_client) == 204
    assert not stripe_oauth.routes["deauthorize"].called
    assert await disconnect(app_client, "nobody") == 404


async def test_reconnecting_after_a_disconnect_works(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    assert await disconnect(app_client) == 204
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")

    rows = await connection_rows(session_factory)
    assert [(c.status, c.stripe_account_id) for c in rows] == [
        ("revoked", "acct_bluefern"),
        ("connected", "acct_bluefern"),
    ]
    event = await receive(app_client, worker_ctx, customer(1, "acct_bluefern"))
    assert event.state == "processed"
    redis = app_client.app.state.redis  # type: ignore[attr-defined]
    imports = [j.job_id for j in await redis.queued_jobs() if j.job_id.startswith("import:")]
    assert imports == [import_job_id(account, rows[1].id)]  # the first one was cancelled


async def test_deauthorized_webhook_revokes_without_calling_stripe(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")
    deauthorized = stripe_event(
        "account.application.deauthorized",
        {"id": "ca_test_client", "object": "application", "name": "stripesync"},
        account="acct_bluefern",
    )
    assert (await receive(app_client, worker_ctx, deauthorized)).state == "processed"

    [connection] = await connection_rows(session_factory)
    assert connection.status == "revoked"
    assert connection.access_token_encrypted is None
    assert not stripe_oauth.routes["deauthorize"].called
    assert stripe_oauth.calls.call_count == 1  # only the code exchange, ever
    later = await receive(app_client, worker_ctx, customer(3, "acct_bluefern"))
    assert later.state == "ignored"
    # The merchant can connect again.
    await connected_as(app_client, stripe_oauth, account, "acct_bluefern")


async def rows_of_account(factory: SessionFactory, account_id: str) -> dict[str, int]:
    """Row count per table with an `account_id` column, for one account."""
    counts = {}
    async with factory() as session:
        for table in Base.metadata.sorted_tables:
            if "account_id" in table.columns:
                stmt = (
                    select(func.count()).select_from(table).where(table.c.account_id == account_id)
                )
                counts[table.name] = int((await session.execute(stmt)).scalar_one())
    return counts


async def events_of(factory: SessionFactory, stripe_account: str) -> int:
    async with factory() as session:
        stmt = select(func.count()).where(StripeEvent.account == stripe_account)
        return int((await session.execute(stmt)).scalar_one())


async def test_purge_deletes_stored_customer_data_and_keeps_evidence_and_other_accounts(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    await put_account(app_client, "acc_2")
    await connected_as(app_client, stripe_oauth, "acc_1", "acct_one")
    await connected_as(app_client, stripe_oauth, "acc_2", "acct_two")
    for n in range(3):
        assert (await receive(app_client, worker_ctx, customer(n, "acct_one"))).state == (
            "processed"
        )
        assert (await receive(app_client, worker_ctx, customer(n, "acct_two"))).state == (
            "processed"
        )
    assert (await receive(app_client, worker_ctx, charge("acct_one", "cus_acct_one_0"))).state == (
        "processed"
    )
    before = await rows_of_account(session_factory, "acc_1")
    assert before["contacts"] == 3 and before["stripe_customers"] == 3
    assert before["payments"] == 1 and before["consent_events"] > 0
    other_before = await rows_of_account(session_factory, "acc_2")

    assert await disconnect(app_client, "acc_1", purge="true") == 204

    after = await rows_of_account(session_factory, "acc_1")
    purged = {t.name for t in repository.purgeable_tables()}
    assert "contacts" in purged
    assert all(after[name] == 0 for name in purged), after
    for name in set(after) - purged:  # kept: the account, its history, the evidence
        assert after[name] == before[name], name
    assert after["stripe_connections"] == 1
    assert await events_of(session_factory, "acct_one") == 0
    assert await rows_of_account(session_factory, "acc_2") == other_before
    assert await events_of(session_factory, "acct_two") == 3

    dashboard = (await app_client.get("/v1/accounts/acc_1", headers=platform_headers)).json()
    assert dashboard["optin"] == {"sent": 0, "confirmed": 0, "declined": 0, "pending": 0}


async def test_disconnect_without_purge_keeps_stored_data(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
) -> None:
    await connected_as(app_client, stripe_oauth, account, "acct_one")
    await receive(app_client, worker_ctx, customer(1, "acct_one"))
    before = await rows_of_account(session_factory, account)
    assert await disconnect(app_client) == 204
    assert await rows_of_account(session_factory, account) == before
    assert await events_of(session_factory, "acct_one") == 1


async def test_purge_keeps_the_consent_ledger_tables() -> None:
    purged = {t.name for t in repository.purgeable_tables()}
    assert purged.isdisjoint(repository.PURGE_KEEPS)
    assert "contacts" in purged
