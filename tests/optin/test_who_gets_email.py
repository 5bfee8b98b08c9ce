"""Who gets the opt-in email: mode optin only, the 183-day window, one email per person EVER."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx
import time_machine
from sqlalchemy import update
from tests.conftest import run_worker_burst
from tests.optin.conftest import (
    ACCOUNT,
    STRIPE_ACCOUNT,
    SmtpCapture,
    apply,
    charge,
    checkout,
    connect,
    contact_of,
    current_ctx,
    customer,
    ledger,
    optin_rows,
)
from tests.support import deliver, stripe_event

from stripesync.accounts.service import purge_stored_data
from stripesync.activity.consent import record_unsubscribed
from stripesync.activity.hooks import contacts_changed
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import ConsentState, OptinEmailState, StripeConnection
from stripesync.optin.tasks import send_optin_email, sweep_optin_emails

FROZEN = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


async def test_new_customer_in_optin_mode_gets_one_email_and_becomes_pending(
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    capture, _ = smtp
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "Ann@Example.com"))

    await run_worker_burst(mail_settings)

    capture.wait_for(1)
    assert len(capture.messages) == 1
    message = capture.messages[0]
    assert capture.envelopes[0] == ("optin@stripesync.test", ["ann@example.com"])
    assert message["From"] == "Blue Fern Pottery <hello@bluefern.example>"
    assert message["Reply-To"] == "owner@bluefern.example"
    assert message["Message-ID"].endswith("@stripesync.test>")
    # (a long header is folded in transit; its value is the unfolded, stripped text)
    unsubscribe = str(message["List-Unsubscribe"]).strip()
    assert unsubscribe.startswith("<http://testserver/optin/")
    assert unsubscribe.endswith("/decline>")
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert {part.get_content_type() for part in message.iter_parts()} == {
        "text/plain",
        "text/html",
    }
    contact = await contact_of(session_factory, "ann@example.com")
    assert contact.consent_state == ConsentState.PENDING
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.SENT and row.sent_at is not None
    assert row.expires_at is not None and (row.expires_at - row.sent_at).days == 30
    assert row.version_id is not None and row.token_hash is not None
    assert [(e.state, e.source) for e in await ledger(session_factory)] == [
        ("pending", "optin_email")
    ]


async def test_concurrent_duplicate_triggers_for_one_person_send_one_email(
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
    worker_ctx: dict[str, Any],
) -> None:
    """Two customer ids with one address, duplicate events, many concurrent hooks and send
    jobs: one row, one email."""
    capture, _ = smtp
    await connect(session_factory)
    await apply(
        session_factory,
        await current_ctx(session_factory),
        "customer",
        customer("cus_a", "pat@example.com"),
    )
    await apply(
        session_factory,
        await current_ctx(session_factory),
        "customer",
        customer("cus_b", "PAT@example.com "),
    )
    contact = await contact_of(session_factory, "pat@example.com")

    async def hook_run() -> None:
        async with transaction(session_factory) as session:
            await contacts_changed(session, ACCOUNT, [contact.id])

    await asyncio.gather(*(hook_run() for _ in range(25)))
    [row] = await optin_rows(session_factory)

    ctx = {**worker_ctx, "settings": mail_settings}
    outcomes = await asyncio.gather(*(send_optin_email(ctx, row.id) for _ in range(10)))
    assert outcomes.count("sent") == 1
    assert await sweep_optin_emails(ctx) == 0  # nothing left to send
    await run_worker_burst(mail_settings)  # the jobs the hooks enqueued find it sent

    capture.wait_for(2, timeout=0.3)
    assert len(capture.messages) == 1
    assert len(await optin_rows(session_factory)) == 1
    pending = [e for e in await ledger(session_factory) if e.state == "pending"]
    assert len(pending) == 1


async def test_duplicate_webhook_events_for_two_customer_ids_send_one_email(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    """The real path: signed webhooks, the worker applying them concurrently."""
    capture, _ = smtp
    await connect(session_factory)
    events = []
    for cid in ("cus_x", "cus_y"):
        obj = customer(cid, "sam@example.com")
        for _ in range(3):
            events.append(stripe_event("customer.created", obj, account=STRIPE_ACCOUNT))
    for event in events:
        assert (await deliver(app_client, event)).status_code == 200

    await run_worker_burst(mail_settings)
    await run_worker_burst(mail_settings)  # retried events, deferred sends

    capture.wait_for(2, timeout=0.5)
    assert len(capture.messages) == 1
    assert len(await optin_rows(session_factory)) == 1


async def test_direct_mode_sends_nothing_and_contacts_are_implied(
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    ctx = await connect(session_factory, mode="direct")
    await apply(session_factory, ctx, "customer", customer("cus_1", "dee@example.com"))
    await run_worker_burst(mail_settings)

    assert smtp[0].messages == []
    assert await optin_rows(session_factory) == []
    contact = await contact_of(session_factory, "dee@example.com")
    assert contact.consent_state == ConsentState.IMPLIED


async def test_checkout_buyer_who_ticked_promotions_gets_no_email(
    session_factory: SessionFactory,
) -> None:
    ctx = await connect(session_factory)
    await apply(
        session_factory, ctx, "checkout", checkout("cs_1", "buyer@example.com", promotions="opt_in")
    )
    await apply(
        session_factory,
        ctx,
        "charge",
        charge("ch_1", customer_id=None, email="buyer@example.com", age_days=0),
    )
    contact = await contact_of(session_factory, "buyer@example.com")
    assert contact.consent_state == ConsentState.CONFIRMED
    assert await optin_rows(session_factory) == []


async def test_guest_payment_in_optin_mode_gets_the_email(session_factory: SessionFactory) -> None:
    ctx = await connect(session_factory)
    await apply(
        session_factory,
        ctx,
        "charge",
        charge("ch_1", customer_id=None, email="guest@example.com", age_days=0),
    )
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.QUEUED
    assert (await contact_of(session_factory, "guest@example.com")).consent_state == "pending"


async def test_unsubscribed_person_gets_no_email(session_factory: SessionFactory) -> None:
    ctx = await connect(session_factory)
    async with transaction(session_factory) as session:
        await record_unsubscribed(
            session, ACCOUNT, "gone@example.com", source="platform", evidence={}
        )
    await apply(session_factory, ctx, "customer", customer("cus_1", "gone@example.com"))
    assert await optin_rows(session_factory) == []
    assert (await contact_of(session_factory, "gone@example.com")).consent_state == "unsubscribed"


async def test_183_day_window_with_frozen_time(session_factory: SessionFactory) -> None:
    with time_machine.travel(FROZEN, tick=False):
        ctx = await connect(session_factory)
        await apply(
            session_factory, ctx, "customer", customer("cus_old", "old@example.com", age_days=184)
        )
        await apply(
            session_factory, ctx, "customer", customer("cus_in", "in@example.com", age_days=182)
        )
        await apply(
            session_factory, ctx, "customer", customer("cus_paid", "paid@example.com", age_days=400)
        )
        await apply(
            session_factory,
            ctx,
            "charge",
            charge("ch_recent", customer_id="cus_paid", email=None, age_days=10),
        )
        await apply(
            session_factory,
            ctx,
            "customer",
            customer("cus_stale", "stale@example.com", age_days=400),
        )
        await apply(
            session_factory,
            ctx,
            "charge",
            charge("ch_stale", customer_id="cus_stale", email=None, age_days=190),
        )

        states = {
            email: (await contact_of(session_factory, email)).consent_state
            for email in (
                "old@example.com",
                "in@example.com",
                "paid@example.com",
                "stale@example.com",
            )
        }
        assert states == {
            "old@example.com": "none",  # created 184 days ago, never paid
            "in@example.com": "pending",  # created 182 days ago
            "paid@example.com": "pending",  # an old customer who paid 10 days ago
            "stale@example.com": "none",  # last paid 190 days ago
        }
        assert len(await optin_rows(session_factory)) == 2

    # Months later the old customer buys again: now they are a customer of the window.
    with time_machine.travel(datetime(2026, 9, 1, tzinfo=UTC), tick=False):
        await apply(
            session_factory,
            ctx,
            "charge",
            charge("ch_new", customer_id="cus_old", email=None, age_days=0),
        )
        assert (await contact_of(session_factory, "old@example.com")).consent_state == "pending"
        assert len(await optin_rows(session_factory)) == 3


async def test_reconnect_resync_and_purge_never_email_a_person_twice(
    session_factory: SessionFactory,
) -> None:
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "kim@example.com"))
    assert len(await optin_rows(session_factory)) == 1

    # Disconnect, purge the stored customer data, reconnect and import again.
    async with transaction(session_factory) as session:
        await session.execute(
            update(StripeConnection)
            .where(StripeConnection.account_id == ACCOUNT)
            .values(status="revoked", revoked_at=FROZEN)
        )
        await purge_stored_data(session, ACCOUNT)
        connection = StripeConnection(
            account_id=ACCOUNT, stripe_account_id=STRIPE_ACCOUNT, livemode=False, mode="optin"
        )
        session.add(connection)
    ctx2 = await current_ctx(session_factory)
    await apply(session_factory, ctx2, "customer", customer("cus_1", "kim@example.com"))
    await apply(session_factory, ctx2, "customer", customer("cus_2", "kim@example.com"))

    [row] = await optin_rows(session_factory)  # the purge keeps the "already asked" row
    assert row.contact_id is None  # ...without the purged contact
    assert (await contact_of(session_factory, "kim@example.com")).consent_state == "none"
    pending = [e for e in await ledger(session_factory) if e.state == "pending"]
    assert len(pending) == 1
