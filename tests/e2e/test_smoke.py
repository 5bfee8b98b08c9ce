"""The short end-to-end scenario `make test` runs: one direct-mode merchant, through the
real processes, from connect to the platform's lists."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.e2e.harness import World
from tests.e2e.scenario import build_merchant


async def test_direct_merchant_connect_import_payments_end_on_the_lists_segments_md_defines(
    make_world: Callable[..., Any],
) -> None:
    world: World = await make_world(duplicate_rate=0.3, extra_env={})
    shop = build_merchant("smoke", "direct", 10, seed=7)
    for obj in shop.history:
        world.stripe.put(shop.stripe_account, obj)
    await world.connect(shop)
    await world.wait_import(shop, timeout=40)
    await world.emit(shop, shop.phase_a + shop.phase_b)
    await world.wait_converged([shop], timeout=45)
    summary = await world.assert_end_state([shop])
    assert summary["acc_smoke"]["platform_contacts"] == len(shop.people)
    # Stripe's duplicates reached the endpoint and changed nothing.
    assert summary["delivery"]["duplicates_sent"] > 0
