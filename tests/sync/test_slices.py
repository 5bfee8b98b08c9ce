"""A sync that runs out of its slice's time is cut off and goes on in a follow-up job: it
ends where one uninterrupted run ends, and nothing is pushed twice."""

from __future__ import annotations

from typing import Any

from arq.constants import default_queue_name
from sqlalchemy import func, select

from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.kit.slices import enqueue_follow_up, follow_up
from stripesync.models import SyncBatch
from stripesync.sync.queue import SYNC_ACCOUNT, sync_job_id
from stripesync.sync.tasks import sync_account_job
from tests.fakes.constant_contact import FakeConstantContact
from tests.sync.conftest import ACCOUNT, add_contacts, contacts_by_email, make_account, push_calls


async def test_a_sync_cut_off_at_its_slice_end_finishes_in_follow_ups_importing_once(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await sync_account_job(sync_ctx, ACCOUNT, poll_interval=0.05)  # lists and custom fields
    people = {f"p{n}@x.io": "implied" for n in range(30)}
    await add_contacts(session_factory, ACCOUNT, people)
    # The platform takes 2.5 s to finish an import; a slice is 1 s.
    fake_cc.completed_after = 2.5
    settings = sync_settings.model_copy(update={"job_timeout_seconds": 2})
    ctx = {**sync_ctx, "settings": settings, "job_id": sync_job_id(ACCOUNT)}

    first = await sync_account_job(ctx, ACCOUNT, poll_interval=0.05)

    assert first["state"] == "continued"
    assert follow_up(ctx) == (SYNC_ACCOUNT, (ACCOUNT,), sync_job_id(ACCOUNT))
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.synced_version < c.version for c in stored.values())  # still lagging
    async with session_factory() as session:
        started = (await session.scalars(select(SyncBatch))).one()
    assert started.state == "started" and started.activity_id is not None
    # The worker's hook enqueues the follow-up under the account's one job id.
    await sync_ctx["redis"].flushdb()  # the sync job the contacts asked for: as if run
    await enqueue_follow_up(ctx)
    queued = await sync_ctx["redis"].zrange(default_queue_name, 0, -1)
    assert queued == [sync_job_id(ACCOUNT).encode()]

    states = []
    for _ in range(10):  # the follow-ups
        turn = {**sync_ctx, "settings": settings, "job_id": sync_job_id(ACCOUNT)}
        states.append((await sync_account_job(turn, ACCOUNT, poll_interval=0.05))["state"])
        if states[-1] == "done":
            assert follow_up(turn) is None
            break
        assert follow_up(turn) is not None
    assert states[-1] == "done" and set(states[:-1]) <= {"continued"}

    # The started import was polled to its end, never sent again.
    assert push_calls(fake_cc) == ["/v3/activities/contacts_json_import"]
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert set(stored) == set(people)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())
    assert all(fake_cc.contact(e) is not None and fake_cc.contact(e).list_ids for e in people)  # type: ignore[union-attr]
    async with session_factory() as session:
        states_in_db = (
            await session.execute(select(SyncBatch.state, func.count()).group_by(SyncBatch.state))
        ).all()
    assert states_in_db == [("completed", 1)]
