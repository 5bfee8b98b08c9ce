"""Each payment counted once (keyed by charge), refunds, failures, livemode separation."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from stripesync.activity.context import ActivityContext
from stripesync.activity.service import (
    apply_charge,
    apply_customer,
    apply_invoice,
    apply_payment_intent,
)
from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.models import StripeEvent
from tests.activity.conftest import (
    T0,
    apply,
    at,
    charge_obj,
    connect_account,
    contact,
    customer_obj,
    fixture,
    payments,
)
from tests.conftest import run_worker_burst
from tests.support import deliver, stripe_event

JENNY = "jenny.rosen@example.com"


async def test_full_invoice_event_set_through_the_webhook_counts_one_purchase(
    app_client: httpx.AsyncClient, settings: Settings, session_factory: SessionFactory
) -> None:
    await connect_account(session_factory)
    invoice = fixture("invoice")
    # Stripe's own delivery: the four events of one invoice payment share one second,
    # arrive out of order, one of them twice.
    events = [
        stripe_event("invoice.payment_succeeded", invoice, created=T0 + 100),
        stripe_event("charge.succeeded", fixture("charge"), created=T0 + 100),
        stripe_event("payment_intent.succeeded", fixture("payment_intent"), created=T0 + 100),
        stripe_event("invoice.paid", invoice, created=T0 + 100),
        stripe_event("customer.created", fixture("customer"), created=T0),
    ]
    events.append(events[1])
    for event in events:
        assert (await deliver(app_client, event)).status_code == 200
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    await run_worker_burst(settings)

    async with session_factory() as session:
        states = set((await session.scalars(select(StripeEvent.state))).all())
    assert states == {"processed"}
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    assert jenny.purchase_count == 1
    assert jenny.total_spent == {"usd": 2500}
    assert jenny.first_purchase_at == jenny.last_purchase_at == at(100)
    [payment] = await payments(session_factory)
    assert (payment.charge_id, payment.invoice_id, payment.payment_intent_id) == (
        "ch_3PNlYq2eZvKYlo2C0Wq3bG1x",
        "in_1PNlYp2eZvKYlo2CmYH5FZ9x",
        "pi_3PNlYq2eZvKYlo2C0xJ6fT8e",
    )
    assert payment.charge_seen and payment.status == "succeeded"


async def test_intent_and_invoice_alone_count_the_payment_under_the_charge_id(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_payment_intent, ctx, fixture("payment_intent"))
    await apply(session_factory, apply_invoice, ctx, fixture("invoice"))
    [payment] = await payments(session_factory)
    assert payment.charge_id == "ch_3PNlYq2eZvKYlo2C0Wq3bG1x" and not payment.charge_seen
    # Before the customer is known, the invoice's customer_email identifies the buyer.
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1 and jenny.total_spent == {"usd": 2500}
    # The charge itself then takes over created time without counting twice.
    await apply(session_factory, apply_charge, ctx, fixture("charge"))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1
    assert jenny.last_purchase_at == at(100)


async def test_payment_intent_without_a_charge_records_nothing(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    intent = fixture("payment_intent", latest_charge=None, status="requires_payment_method")
    applied = await apply(session_factory, apply_payment_intent, ctx, intent)
    assert applied.changed_contact_ids == []
    assert await payments(session_factory) == []


async def test_reapplying_the_same_objects_bumps_no_version(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    await apply(session_factory, apply_charge, ctx, fixture("charge"))
    before = await contact(session_factory, JENNY)
    assert before is not None and before.purchase_count == 1
    again = await apply(session_factory, apply_charge, ctx, fixture("charge"), observed=50)
    again_customer = await apply(session_factory, apply_customer, ctx, fixture("customer"))
    after = await contact(session_factory, JENNY)
    assert after is not None
    assert again.changed_contact_ids == [] and again_customer.changed_contact_ids == []
    assert after.version == before.version


async def test_full_refund_removes_the_purchase_from_count_and_spend(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY, amount=1000))
    await apply(
        session_factory, apply_charge, ctx, charge_obj("ch_2", email=JENNY, amount=500, created=200)
    )
    refunded = charge_obj("ch_1", email=JENNY, amount=1000, refunded=1000)
    await apply(session_factory, apply_charge, ctx, refunded, observed=300)

    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    assert jenny.purchase_count == 1
    assert jenny.total_spent == {"usd": 500}
    assert jenny.first_purchase_at == at(200)
    assert jenny.refund_count == 1 and jenny.last_refund_at == at(300)


async def test_partial_refund_lowers_spend_but_keeps_the_purchase(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY, amount=1000))
    partial = charge_obj("ch_1", email=JENNY, amount=1000, refunded=300)
    await apply(session_factory, apply_charge, ctx, partial, observed=400)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    assert (jenny.purchase_count, jenny.total_spent, jenny.refund_count) == (1, {"usd": 700}, 1)


async def test_stale_success_after_refund_does_not_undo_the_refund(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    refunded = charge_obj("ch_1", email=JENNY, amount=1000, refunded=1000)
    await apply(session_factory, apply_charge, ctx, refunded, observed=300)
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY), observed=300)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 0 and jenny.total_spent == {}
    assert jenny.refund_count == 1


async def test_failed_charge_after_last_purchase_sets_the_failure_flag_until_next_success(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY, created=100))
    failed = charge_obj("ch_2", email=JENNY, status="failed", created=200)
    await apply(session_factory, apply_charge, ctx, failed)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    assert jenny.has_failed_since_last_purchase and jenny.last_failed_at == at(200)
    assert jenny.purchase_count == 1

    await apply(session_factory, apply_charge, ctx, charge_obj("ch_3", email=JENNY, created=300))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and not jenny.has_failed_since_last_purchase
    assert jenny.last_failed_at == at(200) and jenny.purchase_count == 2


async def test_failed_invoice_payment_is_a_failure_not_a_purchase(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    failed_invoice = fixture(
        "invoice", paid=False, status="open", amount_paid=0, charge="ch_failed_1"
    )
    await apply(session_factory, apply_invoice, ctx, failed_invoice)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    assert jenny.purchase_count == 0 and jenny.has_failed_since_last_purchase


async def test_spend_is_kept_per_currency(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY, amount=1000))
    eur = charge_obj("ch_2", email=JENNY, amount=800, currency="EUR", created=150)
    await apply(session_factory, apply_charge, ctx, eur)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.total_spent == {"usd": 1000, "eur": 800}


async def test_test_mode_and_live_rows_never_mix(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    live = ActivityContext(ctx.account_id, ctx.connection_id, ctx.mode, True, ctx.observed_at)
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", email=JENNY, amount=1000))
    await apply(session_factory, apply_charge, live, charge_obj("ch_1", email=JENNY, amount=9000))
    rows = await payments(session_factory)
    assert sorted((p.livemode, p.amount) for p in rows) == [(False, 1000), (True, 9000)]
    # The contact's activity is that of the mode last applied (the connection's mode).
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.total_spent == {"usd": 9000}


async def test_customer_payment_before_the_customer_is_known_ends_on_the_customer_contact(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(
        session_factory,
        apply_charge,
        ctx,
        charge_obj("ch_1", customer="cus_1", email="other@x.example"),
    )
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1
    # The billing email's contact had no other source: it is gone.
    assert await contact(session_factory, "other@x.example") is None
