"""A page transaction that Postgres aborts to break a deadlock is recognised as one to apply
again; other database errors are not."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from stripesync.db import SessionFactory, transaction
from stripesync.imports.runner import _retryable as retryable
from stripesync.models import Account


async def test_a_real_deadlock_is_retryable_and_a_constraint_error_is_not(
    session_factory: SessionFactory,
) -> None:
    async with transaction(session_factory) as session:
        session.add_all(
            [
                Account(id="acc_lock_a", name="A", owner_email="a@shop.example"),
                Account(id="acc_lock_b", name="B", owner_email="b@shop.example"),
            ]
        )
    both_locked_one = asyncio.Barrier(2)
    lock = "SELECT id FROM accounts WHERE id = :id FOR UPDATE"

    async def take(first: str, second: str) -> None:
        async with transaction(session_factory) as session:
            await session.execute(text(lock), {"id": first})
            await both_locked_one.wait()
            await session.execute(text(lock), {"id": second})

    outcomes = await asyncio.gather(
        take("acc_lock_a", "acc_lock_b"), take("acc_lock_b", "acc_lock_a"), return_exceptions=True
    )
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], DBAPIError)  # Postgres chose one victim
    assert retryable(errors[0])

    with pytest.raises(DBAPIError) as duplicate:
        async with transaction(session_factory) as session:
            await session.execute(
                text("INSERT INTO accounts (id, name, owner_email) VALUES ('acc_lock_a', 'x', 'y')")
            )
    assert not retryable(duplicate.value)
