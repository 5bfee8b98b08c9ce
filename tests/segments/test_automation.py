"""Automation triggers: stored in the outbox with the change, posted at least once with
backoff, signed per Standard Webhooks (verified with the `standardwebhooks` package)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import httpx
import respx
import time_machine
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from stripesync.activity.hooks import contacts_changed
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import AutomationOutbox
from stripesync.segments import hooks  # noqa: F401  (registers the hook)
from stripesync.segments.automation import deliver_due, sign
from stripesync.segments.tasks import recompute_accounts
from tests.segments.conftest import (
    AUTOMATION_SECRET,
    AUTOMATION_URL,
    NOW,
    add_contact,
    set_activity,
)

DAY = timedelta(days=1)


async def outbox(factory: SessionFactory) -> list[AutomationOutbox]:
    async with factory() as session:
        rows = await session.scalars(select(AutomationOutbox).order_by(AutomationOutbox.id))
        return list(rows.all())


async def changed(factory: SessionFactory, account: str, *ids: int) -> None:
    async with transaction(factory) as session:
        await contacts_changed(session, account, list(ids))


def types(rows: list[AutomationOutbox]) -> list[tuple[str, Any]]:
    return [(r.event_type, (r.payload["data"].get("segment") or {}).get("key")) for r in rows]


def test_our_signature_verifies_with_the_standard_webhooks_package() -> None:
    body = b'{"type":"segment.entered"}'
    timestamp = int(NOW.timestamp())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(AUTOMATION_SECRET, "msg_1", timestamp, body),
    }
    with time_machine.travel(NOW, tick=False):
        assert Webhook(AUTOMATION_SECRET).verify(body, headers) == {"type": "segment.entered"}


async def test_nothing_is_stored_while_no_automation_url_is_set(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    contact = await add_contact(session_factory, purchase_count=1, last_purchase_at=NOW)
    await changed(session_factory, account, contact)
    assert await outbox(session_factory) == []


async def test_a_first_purchase_stores_segment_and_customer_triggers_once(
    session_factory: SessionFactory,
    account: str,
    automation_settings: Settings,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    contact = await add_contact(f, email="ada@bluefern.example", name="Ada")
    await changed(f, account, contact)  # built-ins created: a first fill triggers nothing
    assert types(await outbox(f)) == []

    await set_activity(
        f,
        contact,
        purchase_count=1,
        first_purchase_at=NOW - timedelta(minutes=1),
        last_purchase_at=NOW - timedelta(minutes=1),
        total_spent={"usd": 1999},
    )
    await changed(f, account, contact)
    rows = await outbox(f)
    assert sorted(types(rows)) == [
        ("customer.first_purchase", None),
        ("segment.entered", "first_time"),
        ("segment.entered", "recent"),
        ("segment.exited", "prospects"),
    ]
    first = next(r for r in rows if r.event_type == "customer.first_purchase")
    assert first.payload["data"]["contact"]["email"] == "ada@bluefern.example"
    assert first.payload["data"]["contact"]["total_spent"] == [{"amount": 1999, "currency": "usd"}]
    assert first.payload["timestamp"] == "2026-11-26T12:00:00Z"

    await changed(f, account, contact)  # the same event processed again
    assert len(await outbox(f)) == 4


async def test_repeat_purchase_failure_and_refund_are_triggered_by_new_activity_only(
    session_factory: SessionFactory,
    account: str,
    automation_settings: Settings,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    contact = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 3 * DAY)
    old_buyer = await add_contact(
        f,
        purchase_count=7,
        last_purchase_at=NOW - 300 * DAY,
        last_refund_at=NOW - 200 * DAY,
        refund_count=1,
    )
    unconsented = await add_contact(
        f, consent_state="pending", purchase_count=1, last_purchase_at=NOW
    )
    await changed(f, account, contact, old_buyer, unconsented)
    customer_rows = [r for r in await outbox(f) if r.event_type.startswith("customer.")]
    # A historical import is not a fresh purchase; people without permission trigger nothing.
    assert [r.event_type for r in customer_rows] == []

    await set_activity(f, contact, purchase_count=2, last_purchase_at=NOW)
    await changed(f, account, contact)
    await set_activity(f, contact, last_failed_at=NOW, has_failed_since_last_purchase=True)
    await changed(f, account, contact)
    await set_activity(f, contact, refund_count=1, last_refund_at=NOW)
    await changed(f, account, contact)
    customer = [r.event_type for r in await outbox(f) if r.event_type.startswith("customer.")]
    assert customer == ["customer.repeat_purchase", "customer.payment_failed", "customer.refunded"]


async def test_due_triggers_are_posted_signed_and_marked_delivered(
    session_factory: SessionFactory,
    account: str,
    automation_settings: Settings,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    contact = await add_contact(f)
    await changed(f, account, contact)
    await set_activity(f, contact, purchase_count=1, last_purchase_at=NOW)
    await changed(f, account, contact)
    stored = await outbox(f)
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(AUTOMATION_URL).mock(return_value=httpx.Response(204))
        async with httpx.AsyncClient() as http:
            delivered = await deliver_due(f, http, automation_settings)
    assert delivered == len(stored) == route.call_count
    webhook = Webhook(AUTOMATION_SECRET)
    received = []
    for call in route.calls:
        payload = webhook.verify(call.request.content, dict(call.request.headers))
        received.append((call.request.headers["webhook-id"], payload["type"]))
    assert sorted(received) == sorted((r.message_id, r.event_type) for r in stored)
    assert {r.state for r in await outbox(f)} == {"delivered"}


async def test_failed_posts_are_retried_with_backoff_under_the_same_id_then_given_up(
    session_factory: SessionFactory,
    account: str,
    automation_settings: Settings,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    contact = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 10 * DAY)
    await changed(f, account, contact)
    await set_activity(f, contact, refund_count=1, last_refund_at=NOW)
    await changed(f, account, contact)
    assert sorted(r.event_type for r in await outbox(f)) == ["customer.refunded", "segment.entered"]

    async with httpx.AsyncClient() as http:
        with respx.mock() as mock:
            route = mock.post(AUTOMATION_URL).mock(return_value=httpx.Response(500))
            assert await deliver_due(f, http, automation_settings) == 0
            rows = await outbox(f)
            assert {r.attempts for r in rows} == {1} and {r.state for r in rows} == {"pending"}
            for row in rows:  # base 30 s, ±20% jitter
                assert timedelta(seconds=24) <= row.next_attempt_at - NOW <= timedelta(seconds=36)
            assert await deliver_due(f, http, automation_settings) == 0  # not due yet
            assert route.call_count == 2

        frozen.shift(timedelta(seconds=40))
        with respx.mock() as mock:
            mock.post(AUTOMATION_URL).mock(side_effect=httpx.ConnectError("refused"))
            await deliver_due(f, http, automation_settings)
        frozen.shift(timedelta(minutes=5))
        refunded = next(r for r in await outbox(f) if r.event_type == "customer.refunded")

        def answer(request: httpx.Request) -> httpx.Response:
            ok = request.headers["webhook-id"] == refunded.message_id
            return httpx.Response(200 if ok else 500)

        with respx.mock() as mock:
            third = mock.post(AUTOMATION_URL).mock(side_effect=answer)
            assert await deliver_due(f, http, automation_settings) == 1
            assert third.call_count == 2

    rows = {r.event_type: r for r in await outbox(f)}
    assert rows["customer.refunded"].state == "delivered"
    assert rows["customer.refunded"].attempts == 3
    # max_attempts=3 in these settings: the other one is given up, kept for operators.
    assert rows["segment.entered"].state == "failed"
    assert rows["segment.entered"].attempts == 3
    assert rows["segment.entered"].last_error == "HTTP 500"


async def test_time_moving_people_out_of_segments_triggers_segment_exited(
    session_factory: SessionFactory,
    account: str,
    automation_settings: Settings,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    contact = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 30 * DAY)
    await recompute_accounts(f)
    frozen.shift(DAY)
    await recompute_accounts(f)
    rows = await outbox(f)
    assert types(rows) == [("segment.exited", "recent")]
    data = rows[0].payload["data"]
    assert data["contact"]["id"] == str(contact) and data["account_id"] == account
    assert json.loads(json.dumps(rows[0].payload))["type"] == "segment.exited"
