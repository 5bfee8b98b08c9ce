"""Order independence: any permutation of a history, with duplicates, ends in the state the
in-order history ends in (Stripe delivers at least once, in any order, with same-second ties).
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from stripesync.activity.context import ActivityContext
from stripesync.activity.service import (
    apply_charge,
    apply_checkout_session,
    apply_customer,
    apply_invoice,
    apply_payment_intent,
    apply_subscription,
    detach_customer,
)
from stripesync.db import SessionFactory
from stripesync.models import CheckoutSession, Contact, Payment, StripeCustomer, Subscription
from tests.activity.conftest import T0, ApplyFn, apply, charge_obj, connect_account, fixture

EMAILS = ["ann@shop.example", " Ann@Shop.example", "bob@shop.example", None, "not-an-email"]
GUEST_EMAILS = ["ann@shop.example", "cy@shop.example", "bob@shop.example"]
CUSTOMER_IDS = ["cus_a", "cus_b", "cus_c"]


@dataclass(frozen=True)
class Step:
    fn: ApplyFn
    obj: dict[str, Any]
    observed: int
    kwargs: dict[str, Any] = field(default_factory=dict)


@st.composite
def histories(draw: st.DrawFn) -> list[Step]:
    """A plausible Stripe history for a few customers, in true order."""
    steps: list[Step] = []
    clock = 0
    customers: dict[str, dict[str, Any]] = {}  # live customers: id -> last object
    deleted: set[str] = set()
    charges: dict[str, dict[str, Any]] = {}
    serial = itertools.count(1)
    for _ in range(draw(st.integers(3, 16))):
        clock += draw(st.sampled_from([0, 0, 1, 2]))  # many same-second ties
        action = draw(
            st.sampled_from(
                [
                    "customer",
                    "customer",
                    "delete",
                    "charge",
                    "charge",
                    "fail",
                    "refund",
                    "intent",
                    "invoice",
                    "subscription",
                    "checkout",
                ]
            )
        )
        if action == "customer":
            cid = draw(st.sampled_from(CUSTOMER_IDS))
            if cid in deleted:
                continue
            created = customers[cid]["created"] if cid in customers else T0 + clock
            obj = fixture(
                "customer",
                id=cid,
                email=draw(st.sampled_from(EMAILS)),
                name=draw(st.sampled_from([None, "Ann", "Bob"])),
                created=created,
                address=draw(st.sampled_from([None, {"country": "US"}, {"country": "CA"}])),
            )
            customers[cid] = obj
            steps.append(Step(apply_customer, obj, clock))
        elif action == "delete" and customers:
            cid = draw(st.sampled_from(sorted(customers)))
            steps.append(Step(detach_customer, customers.pop(cid), clock))
            deleted.add(cid)
        elif action in ("charge", "fail"):
            owner = draw(st.sampled_from([None, *sorted(customers)]))
            chid = f"ch_{next(serial)}"
            obj = charge_obj(
                chid,
                customer=owner,
                email=draw(st.sampled_from(GUEST_EMAILS)),
                amount=draw(st.sampled_from([500, 1000, 2500])),
                currency=draw(st.sampled_from(["usd", "eur"])),
                status="succeeded" if action == "charge" else "failed",
                created=clock,
            )
            obj["payment_intent"] = f"pi_{chid}"
            charges[chid] = obj
            steps.append(Step(apply_charge, obj, clock))
        elif action == "refund":
            paid = sorted(c for c, o in charges.items() if o["status"] == "succeeded")
            if not paid:
                continue
            chid = draw(st.sampled_from(paid))
            old = charges[chid]
            refunded = min(
                old["amount"], old["amount_refunded"] + draw(st.sampled_from([100, 10_000]))
            )
            obj = {**old, "amount_refunded": refunded, "refunded": refunded >= old["amount"]}
            charges[chid] = obj
            steps.append(Step(apply_charge, obj, clock))
        elif action in ("intent", "invoice") and charges:
            chid = draw(st.sampled_from(sorted(charges)))
            charge = charges[chid]
            succeeded = charge["status"] == "succeeded"
            if action == "intent":
                obj = fixture(
                    "payment_intent",
                    id=charge["payment_intent"],
                    latest_charge=chid,
                    customer=charge["customer"],
                    amount=charge["amount"],
                    amount_received=charge["amount"] if succeeded else 0,
                    currency=charge["currency"],
                    created=charge["created"] - 1,
                    status="succeeded" if succeeded else "requires_payment_method",
                    last_payment_error=None if succeeded else {"charge": chid},
                    invoice=None,
                )
                steps.append(Step(apply_payment_intent, obj, clock))
            elif charge["customer"] is not None:
                email = customers.get(charge["customer"], {}).get("email")
                obj = fixture(
                    "invoice",
                    id=f"in_{chid}",
                    charge=chid,
                    customer=charge["customer"],
                    customer_email=email,
                    amount_paid=charge["amount"] if succeeded else 0,
                    amount_due=charge["amount"],
                    currency=charge["currency"],
                    paid=succeeded,
                    status="paid" if succeeded else "open",
                    payment_intent=charge["payment_intent"],
                    created=charge["created"] - 2,
                    status_transitions={"paid_at": charge["created"] if succeeded else None},
                )
                steps.append(Step(apply_invoice, obj, clock))
        elif action == "subscription" and customers:
            cid = draw(st.sampled_from(sorted(customers)))
            status = draw(
                st.sampled_from(["trialing", "active", "past_due", "canceled", "deleted"])
            )
            obj = fixture(
                "subscription",
                id=f"sub_{cid}",
                customer=cid,
                status="canceled" if status == "deleted" else status,
            )
            kwargs = {"deleted": True} if status == "deleted" else {}
            steps.append(Step(apply_subscription, obj, clock, kwargs))
        elif action == "checkout":
            obj = fixture(
                "checkout_session",
                id=f"cs_{next(serial)}",
                created=T0 + clock,
                consent={
                    "promotions": draw(st.sampled_from(["opt_in", "opt_out", None])),
                    "terms_of_service": None,
                },
            )
            obj["customer_details"] = {
                **obj["customer_details"],
                "email": draw(st.sampled_from(GUEST_EMAILS)),
            }
            steps.append(Step(apply_checkout_session, obj, clock))
    return steps


_accounts = itertools.count(1)


async def run(factory: SessionFactory, steps: list[Step]) -> dict[str, Any]:
    n = next(_accounts)
    ctx = await connect_account(
        factory, account_id=f"acc_order_{n}", stripe_account=f"acct_order_{n}", mode="direct"
    )
    for step in steps:
        await apply(factory, step.fn, ctx, step.obj, observed=step.observed, **step.kwargs)
    return await state(factory, ctx)


def _row(obj: Any, skip: set[str], emails: dict[int | None, str | None]) -> dict[str, Any]:
    values = {
        column.key: getattr(obj, column.key)
        for column in obj.__table__.columns
        if column.key not in skip
    }
    if "contact_id" in values:
        values["contact_id"] = emails.get(values["contact_id"])
    return values


async def state(factory: SessionFactory, ctx: ActivityContext) -> dict[str, Any]:
    """Everything stored for the account, without surrogate ids, bookkeeping times or the
    change-feed counter (its value depends on how many intermediate states a path saw)."""
    skip = {"id", "account_id", "version", "created_at", "updated_at"}
    async with factory() as session:
        contacts = list(
            await session.scalars(select(Contact).where(Contact.account_id == ctx.account_id))
        )
        emails: dict[int | None, str | None] = {c.id: c.email for c in contacts}
        emails[None] = None
        result: dict[str, Any] = {}
        for model, key in (
            (Contact, "email"),
            (StripeCustomer, "stripe_id"),
            (Payment, "charge_id"),
            (Subscription, "stripe_id"),
            (CheckoutSession, "stripe_id"),
        ):
            rows = await session.scalars(select(model).where(model.account_id == ctx.account_id))
            sync_columns = {
                c.key for c in model.__table__.columns if c.key.startswith(("sync", "platform_"))
            }
            result[model.__tablename__] = sorted(
                (_row(r, skip | sync_columns, emails) for r in rows), key=lambda r: str(r[key])
            )
    return result


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), rnd=st.randoms(use_true_random=False))
async def test_every_permutation_with_duplicates_ends_in_the_in_order_state(
    session_factory: SessionFactory, history: list[Step], rnd: random.Random
) -> None:
    expected = await run(session_factory, history)
    for _ in range(2):
        shuffled = (
            history + [rnd.choice(history) for _ in range(rnd.randint(0, 3))] if history else []
        )
        rnd.shuffle(shuffled)
        assert await run(session_factory, shuffled) == expected


async def test_same_second_invoice_payment_and_refund_in_reverse_order_match_in_order(
    session_factory: SessionFactory,
) -> None:
    """A fixed worst case: the full event set of one invoice payment and its full refund,
    all in one second, delivered newest first and twice."""
    charge = fixture("charge")
    refunded = {**charge, "amount_refunded": 2500, "refunded": True}
    history = [
        Step(apply_customer, fixture("customer"), 0),
        Step(apply_invoice, fixture("invoice"), 100),
        Step(apply_payment_intent, fixture("payment_intent"), 100),
        Step(apply_charge, charge, 100),
        Step(apply_charge, refunded, 100),
    ]
    expected = await run(session_factory, history)
    reverse = list(reversed(history)) * 2
    assert await run(session_factory, reverse) == expected
    [jenny] = expected["contacts"]
    assert (jenny["purchase_count"], jenny["total_spent"], jenny["refund_count"]) == (0, {}, 1)
