"""A contact's name, country and spend, recomputed from several customers and payments."""

from __future__ import annotations

from typing import Any

from stripesync.activity.context import ActivityContext
from stripesync.activity.service import apply_charge, apply_customer
from stripesync.db import SessionFactory
from tests.activity.conftest import T0, apply, charge_obj, contact, fixture

JENNY = "jenny.rosen@example.com"


def customer(cid: str, *, created: int, name: str | None, country: str | None) -> dict[str, Any]:
    address = {"country": country} if country else None
    return fixture(
        "customer", id=cid, email=JENNY, created=T0 + created, name=name, address=address
    )


def charge(
    chid: str, *, created: int, name: str | None, country: str | None, **kw: Any
) -> dict[str, Any]:
    obj = charge_obj(chid, created=created, **kw)
    obj["billing_details"]["name"] = name
    obj["billing_details"]["address"]["country"] = country
    return obj


async def test_newest_customer_value_wins_over_every_payment_ties_by_customer_id(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    for obj in (
        customer("cus_old", created=5, name="Olga", country="MX"),
        customer("cus_b", created=20, name="Bea", country="CA"),
        customer("cus_a", created=20, name="Ann", country=None),
        customer("cus_new", created=30, name=None, country=None),
    ):
        await apply(session_factory, apply_customer, ctx, obj)
    newest_payment = charge(
        "ch_1", customer="cus_new", created=900, name="Payer", country="DE", email=None
    )
    await apply(session_factory, apply_charge, ctx, newest_payment)

    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1
    # The newest customer has neither; of the two next ones (same second) the first by id
    # has a name, the other one the country. Older customers and the payment lose.
    assert (jenny.name, jenny.country) == ("Ann", "CA")


async def test_without_customer_values_the_newest_payment_wins_ties_by_charge_id(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(
        session_factory, apply_customer, ctx, customer("cus_1", created=0, name=None, country=None)
    )
    for obj in (
        charge("ch_first", customer="cus_1", created=100, name="First", country="US"),
        charge("ch_b", customer="cus_1", created=300, name="Bee", country="FR"),
        charge("ch_a", customer="cus_1", created=300, name="Ay", country=None),
        # The newest payment, failed and without billing details, counts for neither.
        charge("ch_c", customer="cus_1", created=400, name=None, country=None, status="failed"),
    ):
        await apply(session_factory, apply_charge, ctx, obj)

    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 3
    assert (jenny.name, jenny.country) == ("Ay", "FR")


async def test_spend_sums_each_currency_net_of_refunds_over_counted_payments_only(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    for obj in (
        charge_obj("ch_1", email=JENNY, amount=1000, refunded=300),
        charge_obj("ch_2", email=JENNY, amount=500, refunded=500, created=110),
        charge_obj("ch_3", email=JENNY, amount=200, created=120),
        charge_obj("ch_4", email=JENNY, amount=800, refunded=800, currency="eur", created=130),
        charge_obj("ch_5", email=JENNY, amount=400, currency="gbp", status="failed", created=140),
        charge_obj("ch_6", email=JENNY, amount=300, currency="gbp", created=150),
        charge_obj("ch_7", email=JENNY, amount=250, refunded=50, currency="gbp", created=160),
    ):
        await apply(session_factory, apply_charge, ctx, obj)

    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    # Fully refunded and failed payments are no spend: euros are left out, not zero.
    assert jenny.total_spent == {"usd": 900, "gbp": 500}
    assert (jenny.purchase_count, jenny.refund_count) == (4, 4)
