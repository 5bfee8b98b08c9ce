"""Webhook handlers: thin wrappers that hand the event's object to the apply functions."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import service
from stripesync.activity.context import ActivityContext
from stripesync.models import StripeConnection, StripeEvent
from stripesync.webhooks.dispatch import handles


def _object(event: StripeEvent) -> dict[str, object]:
    obj = event.payload["data"]["object"]
    assert isinstance(obj, dict)
    return obj


@handles("customer.created", "customer.updated")
async def on_customer(session: AsyncSession, event: StripeEvent, conn: StripeConnection) -> None:
    await service.apply_customer(session, ActivityContext.for_event(event, conn), _object(event))


@handles("customer.deleted")
async def on_customer_deleted(
    session: AsyncSession, event: StripeEvent, conn: StripeConnection
) -> None:
    await service.detach_customer(session, ActivityContext.for_event(event, conn), _object(event))


@handles("charge.succeeded", "charge.failed", "charge.refunded", "charge.updated")
async def on_charge(session: AsyncSession, event: StripeEvent, conn: StripeConnection) -> None:
    await service.apply_charge(session, ActivityContext.for_event(event, conn), _object(event))


@handles("payment_intent.succeeded", "payment_intent.payment_failed")
async def on_payment_intent(
    session: AsyncSession, event: StripeEvent, conn: StripeConnection
) -> None:
    ctx = ActivityContext.for_event(event, conn)
    await service.apply_payment_intent(session, ctx, _object(event))


@handles("invoice.paid", "invoice.payment_succeeded", "invoice.payment_failed")
async def on_invoice(session: AsyncSession, event: StripeEvent, conn: StripeConnection) -> None:
    await service.apply_invoice(session, ActivityContext.for_event(event, conn), _object(event))


@handles("checkout.session.completed")
async def on_checkout(session: AsyncSession, event: StripeEvent, conn: StripeConnection) -> None:
    ctx = ActivityContext.for_event(event, conn)
    await service.apply_checkout_session(session, ctx, _object(event))


@handles("customer.subscription.created", "customer.subscription.updated")
async def on_subscription(
    session: AsyncSession, event: StripeEvent, conn: StripeConnection
) -> None:
    await service.apply_subscription(
        session, ActivityContext.for_event(event, conn), _object(event)
    )


@handles("customer.subscription.deleted")
async def on_subscription_deleted(
    session: AsyncSession, event: StripeEvent, conn: StripeConnection
) -> None:
    ctx = ActivityContext.for_event(event, conn)
    await service.apply_subscription(session, ctx, _object(event), deleted=True)
