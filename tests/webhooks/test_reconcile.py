"""The reconciler: events Stripe lists as undelivered are stored once and enqueued."""

from __future__ import annotations

from typing import Any

import httpx
import respx
from arq.constants import default_queue_name
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, EventState, StripeConnection, StripeEvent
from stripesync.webhooks.reconcile import reconcile_stripe_events
from stripesync.webhooks.tasks import process_event
from tests.support import deliver, stripe_event

EVENTS_URL = "https://api.stripe.test/v1/events"


async def connect(
    factory: SessionFactory, account_id: str, stripe_account: str, *, status: str = "connected"
) -> None:
    async with transaction(factory) as session:
        session.add(Account(id=account_id, name="Blue Fern", owner_email="owner@bluefern.example"))
        await session.flush()
        session.add(
            StripeConnection(
                account_id=account_id,
                stripe_account_id=stripe_account,
                livemode=False,
                mode="direct",
                status=status,
            )
        )


def page(events: list[dict[str, Any]], has_more: bool = False) -> httpx.Response:
    return httpx.Response(
        200, json={"object": "list", "data": events, "has_more": has_more, "url": "/v1/events"}
    )


def customer_event(account: str | None, n: int) -> dict[str, Any]:
    obj = {"id": f"cus_{n}", "object": "customer", "email": f"p{n}@kiln.example", "created": 1}
    return stripe_event("customer.created", obj, account=account)


async def stored(factory: SessionFactory) -> dict[str, StripeEvent]:
    async with factory() as session:
        return {e.id: e for e in await session.scalars(select(StripeEvent))}


async def queued_ids(ctx: dict[str, Any]) -> set[str]:
    raw = await ctx["redis"].zrange(default_queue_name, 0, -1)
    return {r.decode() for r in raw}


async def test_undelivered_events_are_stored_enqueued_and_then_processed(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    ctx = {**worker_ctx, "engine": engine}
    await connect(session_factory, "acc_1", "acct_1")
    # Listed on behalf of the connected account, an event may come without `account`.
    missed = [customer_event("acct_1", 1), customer_event(None, 2)]
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(EVENTS_URL).mock(return_value=page(missed))
        assert await reconcile_stripe_events(ctx) == 2
    request = route.calls[0].request
    assert request.headers["Stripe-Account"] == "acct_1"
    assert request.url.params["delivery_success"] == "false"
    assert "created[gte]" in request.url.params
    events = await stored(session_factory)
    assert set(events) == {e["id"] for e in missed}
    assert {e.account for e in events.values()} == {"acct_1"}
    assert await queued_ids(ctx) == set(events)
    for event_id in events:
        assert await process_event(ctx, event_id) == "processed"
    assert {e.state for e in (await stored(session_factory)).values()} == {EventState.PROCESSED}


async def test_an_event_that_arrived_meanwhile_is_not_stored_twice_or_reprocessed(
    worker_ctx: dict[str, Any],
    session_factory: SessionFactory,
    engine: AsyncEngine,
    app_client: httpx.AsyncClient,
) -> None:
    ctx = {**worker_ctx, "engine": engine}
    await connect(session_factory, "acc_1", "acct_1")
    late, missed = customer_event("acct_1", 1), customer_event("acct_1", 2)
    assert (await deliver(app_client, late)).status_code == 200
    assert await process_event(ctx, late["id"]) == "processed"
    await ctx["redis"].flushdb()
    # Two pages: the cursor of the second is the last id of the first.
    with respx.mock(assert_all_called=True) as mock:
        route = mock.get(EVENTS_URL).mock(side_effect=[page([late], has_more=True), page([missed])])
        assert await reconcile_stripe_events(ctx) == 1
    assert route.calls[1].request.url.params["starting_after"] == late["id"]
    events = await stored(session_factory)
    assert set(events) == {late["id"], missed["id"]}
    assert events[late["id"]].state == EventState.PROCESSED
    assert await queued_ids(ctx) == {missed["id"]}  # the processed one is not enqueued again
    async with session_factory() as session:
        count = await session.scalar(select(func.count()).select_from(StripeEvent))
    assert count == 2


async def test_one_failing_account_does_not_stop_the_others_and_revoked_ones_are_skipped(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    ctx = {**worker_ctx, "engine": engine}
    await connect(session_factory, "acc_1", "acct_broken")
    await connect(session_factory, "acc_2", "acct_ok")
    await connect(session_factory, "acc_3", "acct_revoked", status="revoked")
    ok_event = customer_event("acct_ok", 1)
    foreign = customer_event("acct_someone_else", 2)  # never stored under this connection
    live = {**customer_event("acct_ok", 3), "livemode": True}  # a test connection ignores it
    with respx.mock(assert_all_called=False) as mock:
        route = mock.get(EVENTS_URL)
        route.side_effect = lambda request: (
            httpx.Response(401, json={"error": {"type": "invalid_request_error"}})
            if request.headers["Stripe-Account"] == "acct_broken"
            else page([ok_event, foreign, live])
        )
        assert await reconcile_stripe_events(ctx) == 1
    asked = {call.request.headers["Stripe-Account"] for call in route.calls}
    assert asked == {"acct_broken", "acct_ok"}
    assert set(await stored(session_factory)) == {ok_event["id"]}


async def test_stripe_down_stores_nothing_and_raises_nothing(
    worker_ctx: dict[str, Any], session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    ctx = {**worker_ctx, "engine": engine}
    await connect(session_factory, "acc_1", "acct_1")
    with respx.mock() as mock:
        mock.get(EVENTS_URL).mock(return_value=httpx.Response(503))
        assert await reconcile_stripe_events(ctx) == 0
    assert await stored(session_factory) == {}
