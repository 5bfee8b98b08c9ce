"""The hourly recompute of every account out of time: it stops between two accounts and
goes on after the last one done, ending where one uninterrupted run ends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import time_machine

from stripesync.db import SessionFactory, transaction
from stripesync.kit.slices import follow_up
from stripesync.models import Account
from stripesync.segments import hooks  # noqa: F401  (registers the hook, as load_handlers does)
from stripesync.segments.tasks import recompute_accounts, recompute_segments
from tests.segments.conftest import NOW, add_contact, memberships

ACCOUNTS = ["acc_r1", "acc_r2", "acc_r3"]


async def _accounts_with_people(f: SessionFactory) -> None:
    async with transaction(f) as session:
        for account_id in ACCOUNTS:
            session.add(Account(id=account_id, name=account_id, owner_email="o@x.example"))
    for account_id in ACCOUNTS:
        await add_contact(f, account_id, purchase_count=1, last_purchase_at=NOW - timedelta(5))
        await add_contact(f, account_id, purchase_count=2, last_purchase_at=NOW - timedelta(40))


async def test_a_recompute_past_its_deadline_goes_on_account_by_account(
    session_factory: SessionFactory,
    worker_ctx: dict[str, Any],
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    await _accounts_with_people(f)
    await recompute_accounts(f)
    frozen.shift(timedelta(days=30))  # the recent buyers are not recent any more
    done: list[str] = []
    after = None
    while True:  # a deadline already past: one account per slice
        totals = await recompute_accounts(f, after=after, stop_at=0.0)
        assert totals["accounts"] == 1 and totals["exited"] >= 1
        if "continue_after" not in totals:
            break
        after = totals["continue_after"]
        done.append(after)
        assert len(done) < len(ACCOUNTS)
    assert done == ACCOUNTS[:-1]
    assert await recompute_accounts(f) == {
        "accounts": 3,
        "contacts_changed": 0,
        "entered": 0,
        "exited": 0,
    }  # nothing left for a full run to do
    for account_id in ACCOUNTS:
        assert "recent" not in await memberships(f, account_id)

    # The job that goes on after an account does the ones after it, then asks for nothing.
    frozen.shift(timedelta(days=400))
    totals = await recompute_segments(worker_ctx, None, ACCOUNTS[0])
    assert totals["accounts"] == 2 and "continue_after" not in totals
    assert follow_up(worker_ctx) is None
