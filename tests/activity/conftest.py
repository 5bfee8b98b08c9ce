"""Helpers for activity tests: a connected account, Stripe fixtures, applying objects."""

from __future__ import annotations

import copy
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from stripesync.activity.context import ActivityContext
from stripesync.activity.service import Applied
from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Contact, Payment, StripeConnection, StripeCustomer

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
ACCOUNT_ID = "acc_1"
STRIPE_ACCOUNT = "acct_test_1"
T0 = 1_718_900_000

ApplyFn = Callable[..., Awaitable[Applied]]


def fixture(fixture_name: str, /, **overrides: Any) -> dict[str, Any]:
    """A Stripe object from tests/fixtures/stripe, with top-level fields replaced."""
    obj: dict[str, Any] = json.loads((FIXTURES / f"{fixture_name}.json").read_text())
    obj = copy.deepcopy(obj)
    obj.update(overrides)
    return obj


def at(seconds: int) -> datetime:
    return datetime.fromtimestamp(T0 + seconds, UTC)


async def connect_account(
    factory: SessionFactory,
    *,
    account_id: str = ACCOUNT_ID,
    stripe_account: str = STRIPE_ACCOUNT,
    mode: str = "direct",
    livemode: bool = False,
) -> ActivityContext:
    async with transaction(factory) as session:
        session.add(Account(id=account_id, name="Blue Fern", owner_email="owner@bluefern.example"))
        await session.flush()
        connection = StripeConnection(
            account_id=account_id, stripe_account_id=stripe_account, livemode=livemode, mode=mode
        )
        session.add(connection)
        await session.flush()
        return ActivityContext.for_connection(connection, at(0))


@pytest.fixture
async def ctx(session_factory: SessionFactory) -> ActivityContext:
    """A direct-mode test-mode connection of account acc_1."""
    return await connect_account(session_factory)


async def apply(
    factory: SessionFactory,
    fn: ApplyFn,
    ctx: ActivityContext,
    obj: dict[str, Any],
    *,
    observed: int = 0,
    **kwargs: Any,
) -> Applied:
    """Run one apply function in its own transaction, observed `observed` seconds after T0."""
    when = ActivityContext(
        account_id=ctx.account_id,
        connection_id=ctx.connection_id,
        mode=ctx.mode,
        livemode=ctx.livemode,
        observed_at=at(observed),
    )
    async with transaction(factory) as session:
        return await fn(session, when, obj, **kwargs)


async def contact(
    factory: SessionFactory, email: str, account_id: str = ACCOUNT_ID
) -> Contact | None:
    async with factory() as session:
        return await session.scalar(
            select(Contact).where(Contact.account_id == account_id, Contact.email == email)
        )


async def contacts(factory: SessionFactory, account_id: str = ACCOUNT_ID) -> list[Contact]:
    async with factory() as session:
        rows = await session.scalars(
            select(Contact).where(Contact.account_id == account_id).order_by(Contact.email)
        )
        return list(rows)


async def payments(factory: SessionFactory, account_id: str = ACCOUNT_ID) -> list[Payment]:
    async with factory() as session:
        rows = await session.scalars(
            select(Payment).where(Payment.account_id == account_id).order_by(Payment.charge_id)
        )
        return list(rows)


async def customers(factory: SessionFactory, account_id: str = ACCOUNT_ID) -> list[StripeCustomer]:
    async with factory() as session:
        rows = await session.scalars(
            select(StripeCustomer)
            .where(StripeCustomer.account_id == account_id)
            .order_by(StripeCustomer.stripe_id)
        )
        return list(rows)


def customer_obj(
    cid: str, email: str | None, *, created: int = 0, name: str | None = None
) -> dict[str, Any]:
    return fixture("customer", id=cid, email=email, created=T0 + created, name=name, address=None)


def charge_obj(
    chid: str,
    *,
    customer: str | None = None,
    email: str | None = None,
    amount: int = 1000,
    refunded: int = 0,
    status: str = "succeeded",
    created: int = 100,
    currency: str = "usd",
) -> dict[str, Any]:
    obj = fixture(
        "charge",
        id=chid,
        customer=customer,
        amount=amount,
        amount_captured=amount,
        amount_refunded=refunded,
        refunded=refunded >= amount,
        status=status,
        paid=status == "succeeded",
        created=T0 + created,
        currency=currency,
        invoice=None,
        payment_intent=None,
    )
    obj["billing_details"] = {**obj["billing_details"], "email": email, "name": None}
    obj["billing_details"]["address"] = {**obj["billing_details"]["address"], "country": None}
    return obj
