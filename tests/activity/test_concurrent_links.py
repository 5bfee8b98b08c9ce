"""A customer and its first payment applied by two transactions at once.

Each transaction misses the other's uncommitted row, so without care the payment ends up
off its customer's contact. Webhook events of one account are applied one at a time; the
historical import applies pages in parallel and repairs such payments before finishing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from stripesync.activity import repository
from stripesync.activity.context import ActivityContext
from stripesync.activity.service import apply_charge, apply_customer
from stripesync.db import SessionFactory, transaction
from stripesync.imports.applying import relink_payments_off_customer
from stripesync.imports.repository import take_touched
from stripesync.models import Account, Job, StripeEvent
from stripesync.webhooks.dispatch import load_handlers
from stripesync.webhooks.tasks import apply_event
from tests.activity.conftest import STRIPE_ACCOUNT, charge_obj, contact, customer_obj, payments
from tests.support import stripe_event

JENNY = "jenny.rosen@example.com"

load_handlers()


def _event(event_type: str, obj: dict[str, Any]) -> StripeEvent:
    raw = stripe_event(event_type, obj, account=STRIPE_ACCOUNT)
    return StripeEvent(
        id=raw["id"],
        type=event_type,
        account=STRIPE_ACCOUNT,
        livemode=False,
        created=datetime.fromtimestamp(raw["created"], UTC),
        payload=raw,
        state="received",
        attempts=0,
    )


async def _race(session_factory: SessionFactory, first: Any, second: Any) -> bool:
    """Run `first` in a transaction left open, then `second` in another; commit the first
    after a while, then the second. Answers whether `second` waited for the first."""
    async with session_factory() as one, session_factory() as two:
        await one.begin()
        await two.begin()
        await first(one)
        applying = asyncio.create_task(second(two))
        await asyncio.sleep(0.5)
        waited = not applying.done()
        await one.commit()
        await asyncio.wait_for(applying, 10)
        await two.commit()
    return waited


async def test_webhook_events_of_one_account_apply_one_at_a_time(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    customer = _event("customer.created", customer_obj("cus_new", JENNY))
    charge = _event("charge.succeeded", charge_obj("ch_first", customer="cus_new", email=None))

    waited = await _race(
        session_factory,
        lambda session: apply_event(session, customer),
        lambda session: apply_event(session, charge),
    )

    assert waited
    assert customer.state == charge.state == "processed"
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    (payment,) = await payments(session_factory)
    assert payment.contact_id == jenny.id


async def test_the_import_relinks_payments_applied_beside_their_customer(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    """Two appliers, one with the customer, one with its payment, at once: the payment is
    left off the customer's contact; the repair pass links it and owes both a finish."""
    async with transaction(session_factory) as session:
        account = await session.get(Account, ctx.account_id)
        assert account is not None
        job = Job(id=f"job_{uuid.uuid4().hex[:12]}", account_id=ctx.account_id, kind="import")
        session.add(job)
    await _race(
        session_factory,
        lambda session: apply_customer(session, ctx, customer_obj("cus_new", JENNY)),
        lambda session: apply_charge(
            session, ctx, charge_obj("ch_first", customer="cus_new", email=None)
        ),
    )
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    (payment,) = await payments(session_factory)
    assert payment.contact_id is None  # what the two transactions left
    async with transaction(session_factory) as session:
        assert await repository.payments_off_their_customer(session, ctx, 0, 10) == [
            (payment.id, "ch_first")
        ]

    async with transaction(session_factory) as session:
        last = await relink_payments_off_customer(session, ctx, job.id, after=0, limit=10)
        assert last == payment.id
    async with transaction(session_factory) as session:
        assert (
            await relink_payments_off_customer(session, ctx, job.id, after=last, limit=10) is None
        )
        assert await repository.payments_off_their_customer(session, ctx, 0, 10) == []
        touched, _ = await take_touched(session, job.id, 10)
    (payment,) = await payments(session_factory)
    assert payment.contact_id == jenny.id
    assert jenny.id in touched
