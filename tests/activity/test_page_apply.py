"""A page applied inside `deferred_finish` (the historical import's path) ends in the same
state as its objects applied one by one, and finishes its contacts once per page."""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity.context import ActivityContext
from stripesync.activity.hooks import on_contacts_changed
from stripesync.activity.service import (
    apply_charge,
    apply_charges,
    apply_checkout_session,
    apply_checkout_sessions,
    apply_customer,
    apply_customers,
    apply_subscription,
    apply_subscriptions,
    deferred_finish,
    detach_customer,
)
from stripesync.db import SessionFactory, transaction
from stripesync.segments.service import ensure_builtin_segments
from tests.activity.conftest import ApplyFn, at, charge_obj, connect_account, contact, customer_obj
from tests.activity.test_order_independence import Step, histories, run, state

# The batch form of each single-object apply function the import uses.
BATCHED = {
    apply_customer: (apply_customers, {}),
    detach_customer: (apply_customers, {"deleted": True}),
    apply_charge: (apply_charges, {}),
    apply_subscription: (apply_subscriptions, {}),
    apply_checkout_session: (apply_checkout_sessions, {}),
}

_accounts = itertools.count(1)
_calls: list[tuple[str, list[int]]] = []


@on_contacts_changed
async def _record(session: AsyncSession, account_id: str, contact_ids: Collection[int]) -> None:
    # Registered for the whole test session; records only this module's accounts.
    if account_id.startswith("acc_page_"):
        _calls.append((account_id, sorted(contact_ids)))


def _at(ctx: ActivityContext, observed: int) -> ActivityContext:
    return ActivityContext(ctx.account_id, ctx.connection_id, ctx.mode, ctx.livemode, at(observed))


async def run_in_pages(factory: SessionFactory, steps: list[Step], page_size: int) -> dict:  # type: ignore[type-arg]
    n = next(_accounts)
    ctx = await connect_account(factory, account_id=f"acc_page_{n}", stripe_account=f"acct_p{n}")
    for start in range(0, len(steps), page_size):
        async with transaction(factory) as session, deferred_finish(session, ctx):
            for step in steps[start : start + page_size]:
                await step.fn(session, _at(ctx, step.observed), step.obj, **step.kwargs)
    return await state(factory, ctx)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), page_size=st.integers(2, 8), rnd=st.randoms(use_true_random=False))
async def test_pages_of_any_order_end_in_the_one_by_one_state(
    session_factory: SessionFactory, history: list[Step], page_size: int, rnd: random.Random
) -> None:
    expected = await run(session_factory, history)
    assert await run_in_pages(session_factory, history, page_size) == expected
    shuffled = history + [rnd.choice(history) for _ in range(rnd.randint(0, 3))] if history else []
    rnd.shuffle(shuffled)
    assert await run_in_pages(session_factory, shuffled, page_size) == expected


def _page_objects() -> list[tuple[ApplyFn, dict[str, Any]]]:
    objects: list[tuple[ApplyFn, dict[str, Any]]] = [
        (apply_customer, customer_obj(f"cus_{i}", f"p{i}@shop.example")) for i in range(3)
    ]
    objects += [(apply_charge, charge_obj(f"ch_{i}", customer=f"cus_{i}")) for i in range(3)]
    objects.append((apply_charge, charge_obj("ch_g", email="guest@shop.example")))
    return objects


PEOPLE = ("p0@shop.example", "p1@shop.example", "p2@shop.example", "guest@shop.example")


async def test_a_page_tells_the_hooks_once_with_every_changed_contact(
    session_factory: SessionFactory,
) -> None:
    ctx = await connect_account(session_factory, account_id="acc_page_hooks", stripe_account="x")
    one = await connect_account(session_factory, account_id="acc_page_each", stripe_account="y")
    async with transaction(session_factory) as session:
        # As a connect makes them: their first creation would recompute (and bump) everyone.
        for account_id in ("acc_page_hooks", "acc_page_each"):
            await ensure_builtin_segments(session, account_id)
    _calls.clear()
    async with transaction(session_factory) as session, deferred_finish(session, ctx) as page:
        for fn, obj in _page_objects():
            applied = await fn(session, ctx, obj)
            assert applied.changed_contact_ids == []  # told at the end of the page
    ids = []
    for email in PEOPLE:
        person = await contact(session_factory, email, "acc_page_hooks")
        assert person is not None and person.purchase_count == 1
        ids.append(person.id)
    assert _calls == [("acc_page_hooks", sorted(ids))]
    assert page.changed_contact_ids == sorted(ids)

    # The same objects one by one: the hooks are told per object, and the change feed
    # moves per object too (a page refreshes each contact once).
    _calls.clear()
    async with transaction(session_factory) as session:
        for fn, obj in _page_objects():
            assert (await fn(session, one, obj)).changed_contact_ids != []
    assert len(_calls) == len(_page_objects())
    for email in PEOPLE[:3]:
        paged = await contact(session_factory, email, "acc_page_hooks")
        each = await contact(session_factory, email, "acc_page_each")
        assert paged is not None and each is not None and paged.version < each.version


def batches(steps: list[Step], size: int) -> list[list[Step]]:
    """Pages as the import reads them: the steps of each kind (in order of first
    appearance) in chunks of at most `size`, each chunk observed at one time."""
    kinds: dict[Any, list[Step]] = {}
    for step in steps:
        kind = (step.fn, tuple(step.kwargs.items())) if step.fn in BATCHED else len(kinds)
        kinds.setdefault(kind, []).append(step)
    groups = []
    for same in kinds.values():
        for start in range(0, len(same), size):
            chunk = same[start : start + size]
            groups.append([Step(s.fn, s.obj, chunk[0].observed, s.kwargs) for s in chunk])
    return groups


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(history=histories(), size=st.integers(2, 6), rnd=st.randoms(use_true_random=False))
async def test_batches_with_repeats_end_in_the_one_by_one_state(
    session_factory: SessionFactory, history: list[Step], size: int, rnd: random.Random
) -> None:
    steps = history + [rnd.choice(history) for _ in range(rnd.randint(0, 4))] if history else []
    rnd.shuffle(steps)
    groups = batches(steps, size)
    expected = await run(session_factory, [step for group in groups for step in group])
    n = next(_accounts)
    ctx = await connect_account(
        session_factory, account_id=f"acc_page_b{n}", stripe_account=f"acct_b{n}", mode="direct"
    )
    for group in groups:
        first = group[0]
        async with transaction(session_factory) as session:
            if first.fn in BATCHED:
                batch_fn, kwargs = BATCHED[first.fn]
                applied = await batch_fn(
                    session,
                    _at(ctx, first.observed),
                    [s.obj for s in group],
                    **{**kwargs, **first.kwargs},
                )
                assert len(applied) == len(group)
            else:
                await first.fn(session, _at(ctx, first.observed), first.obj, **first.kwargs)
    assert await state(session_factory, ctx) == expected
