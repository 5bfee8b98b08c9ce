"""An import's contacts are marked synced ahead of the poll expected to see its end, in a
transaction that only a plain success commits: a failure, refused rows, a platform slower
than its pace said, a run that dies meanwhile or a change made meanwhile leave nothing
marked that should not be."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select, text

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import SyncBatch
from stripesync.sync import bulk
from stripesync.sync.service import sync_account
from stripesync.sync.tasks import platform_client
from tests.fakes.constant_contact import FakeConstantContact
from tests.sync.conftest import ACCOUNT, add_contacts, contacts_by_email, make_account

# Long enough for polls to learn the pace and plan the one that should see the end.
IMPORT_SECONDS = 2.0


async def _sync(ctx: dict[str, Any]) -> Any:
    return await sync_account(
        ctx["session_factory"], platform_client(ctx, ACCOUNT), ACCOUNT, poll_interval=0.25
    )


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How often each way of settling ran (`_settle`: once the activity ended)."""
    counts = {"ahead": 0, "after_end": 0}
    settle_ahead, settle = bulk._settle_ahead, bulk._settle

    async def counted_ahead(*args: Any, **kwargs: Any) -> Any:
        counts["ahead"] += 1
        return await settle_ahead(*args, **kwargs)

    async def counted_settle(*args: Any, **kwargs: Any) -> Any:
        counts["after_end"] += 1
        return await settle(*args, **kwargs)

    monkeypatch.setattr(bulk, "_settle_ahead", counted_ahead)
    monkeypatch.setattr(bulk, "_settle", counted_settle)
    return counts


@pytest.fixture
def poll_late(monkeypatch: pytest.MonkeyPatch) -> None:
    """The poll expected to see the end comes surely after it (the pace it goes by is
    measured on a busy test machine): these tests are about what that poll sees."""
    poll_after = bulk._poll_after

    async def late(client: Any, activity_id: str, delay: float) -> Any:
        return await poll_after(client, activity_id, delay + 0.3)

    monkeypatch.setattr(bulk, "_poll_after", late)


@pytest.fixture
async def ready(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    """An account whose lists and fields exist; imports then take `IMPORT_SECONDS`."""
    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)
    fake_cc.completed_after = IMPORT_SECONDS


async def _batch(factory: SessionFactory) -> SyncBatch:
    async with factory() as session:
        return (await session.scalars(select(SyncBatch))).one()


async def test_a_plain_success_is_settled_by_the_poll_that_sees_the_end(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    calls: dict[str, int],
    poll_late: None,
    ready: None,
) -> None:
    await add_contacts(session_factory, ACCOUNT, {f"p{n}@x.io": "implied" for n in range(20)})

    report = await _sync(sync_ctx)

    assert calls == {"ahead": 1, "after_end": 0}
    assert report.imported == 20 and report.errors == 0
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())
    assert all(c.synced_lists for c in stored.values())
    batch = await _batch(session_factory)
    assert batch.state == "completed" and batch.finished_at is not None
    assert all(fake_cc.contact(e) is not None for e in stored)


async def test_a_failed_activity_seen_by_that_poll_undoes_the_marking(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    calls: dict[str, int],
    poll_late: None,
    ready: None,
) -> None:
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied", "b@x.io": "implied"})
    fake_cc.fail_next_activities = 1

    report = await _sync(sync_ctx)

    assert calls == {"ahead": 1, "after_end": 1}
    assert report.imported == 0 and report.errors == 2
    stored = await contacts_by_email(session_factory, ACCOUNT)
    for contact in stored.values():
        assert (contact.sync_state, contact.sync_error) == ("error", "Activity failed (injected)")
        assert contact.synced_at is None  # never marked synced
        # The lists it may have been put on are noted, for later removals.
        assert contact.synced_lists
    assert (await _batch(session_factory)).state == "failed"


async def test_rows_the_platform_refused_are_errors_and_the_rest_synced(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    calls: dict[str, int],
    poll_late: None,
    ready: None,
) -> None:
    long_local = "x" * 90  # the platform refuses addresses over 80 characters
    await add_contacts(
        session_factory, ACCOUNT, {"ok@x.io": "implied", f"{long_local}@x.io": "implied"}
    )

    await _sync(sync_ctx)

    assert calls == {"ahead": 1, "after_end": 1}
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert stored["ok@x.io"].sync_state == "ok"
    bad = stored[f"{long_local}@x.io"]
    assert (bad.sync_state, bad.sync_error) == ("error", "Row 1: invalid email address")


async def test_a_platform_slower_than_its_pace_is_settled_once_it_ends(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    calls: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    ready: None,
) -> None:
    ids = await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    seen_while_marked: list[tuple[int, str]] = []
    poll_after = bulk._poll_after

    async def slowed(client: Any, activity_id: str, delay: float) -> Any:
        # The platform takes a second longer than its pace said; meanwhile the marking is
        # not visible to anyone else.
        await asyncio.sleep(delay)
        with fake_cc.lock:
            fake_cc.activities[activity_id].done_after += 1.0
        async with session_factory() as session:
            row = (
                await session.execute(
                    text("SELECT synced_version, sync_state FROM contacts WHERE id = :id"),
                    {"id": ids["a@x.io"]},
                )
            ).one()
        seen_while_marked.append((row.synced_version, row.sync_state))
        return await poll_after(client, activity_id, 0)

    monkeypatch.setattr(bulk, "_poll_after", slowed)

    await _sync(sync_ctx)

    assert seen_while_marked == [(0, "pending")]
    assert calls == {"ahead": 1, "after_end": 1}
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert stored["a@x.io"].sync_state == "ok"
    assert (await _batch(session_factory)).state == "completed"


async def test_a_poll_that_does_not_answer_in_time_releases_the_contacts(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    calls: dict[str, int],
    monkeypatch: pytest.MonkeyPatch,
    ready: None,
) -> None:
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    monkeypatch.setattr(bulk, "SETTLE_AHEAD_POLL_SECONDS", 0.2)
    poll_after = bulk._poll_after

    async def stuck(client: Any, activity_id: str, delay: float) -> Any:
        # The poll hangs (a platform answering slowly, the client retrying): the contacts'
        # row locks are not held through it.
        return await poll_after(client, activity_id, delay + 1.0)

    monkeypatch.setattr(bulk, "_poll_after", stuck)

    await _sync(sync_ctx)

    assert calls == {"ahead": 1, "after_end": 1}  # rolled back, settled after the end
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert stored["a@x.io"].sync_state == "ok"
    assert (await _batch(session_factory)).state == "completed"


async def test_a_run_that_dies_while_marked_ahead_leaves_nothing_marked_and_is_resumed(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    monkeypatch: pytest.MonkeyPatch,
    ready: None,
) -> None:
    await add_contacts(session_factory, ACCOUNT, {f"p{n}@x.io": "implied" for n in range(5)})
    poll_after = bulk._poll_after

    async def dies(client: Any, activity_id: str, delay: float) -> Any:
        await asyncio.sleep(delay)
        raise ConnectionResetError("the run dies while its contacts are marked ahead")

    monkeypatch.setattr(bulk, "_poll_after", dies)
    with pytest.raises(ConnectionResetError):
        await _sync(sync_ctx)

    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.synced_version == 0 and c.sync_state == "pending" for c in stored.values())
    assert (await _batch(session_factory)).state == "started"

    monkeypatch.setattr(bulk, "_poll_after", poll_after)
    await _sync(sync_ctx)  # the re-run polls the started import instead of sending it again

    assert len(fake_cc.api_requests("contacts_json_import")) == 1
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())
    assert (await _batch(session_factory)).state == "completed"


async def test_a_change_made_while_marked_ahead_is_not_lost(
    sync_ctx: dict[str, Any],
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    monkeypatch: pytest.MonkeyPatch,
    ready: None,
) -> None:
    ids = await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    poll_after = bulk._poll_after
    changes: list[asyncio.Task[None]] = []

    async def change() -> None:
        async with transaction(session_factory) as session:
            await session.execute(
                text("UPDATE contacts SET name = 'Ann Lee', version = version + 1 WHERE id = :id"),
                {"id": ids["a@x.io"]},
            )

    async def changed_meanwhile(client: Any, activity_id: str, delay: float) -> Any:
        changes.append(asyncio.create_task(change()))
        return await poll_after(client, activity_id, delay)

    monkeypatch.setattr(bulk, "_poll_after", changed_meanwhile)
    await _sync(sync_ctx)
    await asyncio.wait_for(changes[0], 10)

    stored = (await contacts_by_email(session_factory, ACCOUNT))["a@x.io"]
    # Synced at the version read; the change came after, so the contact lags again.
    assert stored.synced_version == stored.version - 1 and stored.name == "Ann Lee"

    monkeypatch.setattr(bulk, "_poll_after", poll_after)
    await _sync(sync_ctx)

    stored = (await contacts_by_email(session_factory, ACCOUNT))["a@x.io"]
    assert stored.sync_state == "ok" and stored.synced_version == stored.version
    assert fake_cc.contact("a@x.io").first_name == "Ann"  # type: ignore[union-attr]
