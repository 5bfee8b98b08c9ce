"""The sync job: coalesced per account, never two at once, swept, and its token wiring."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from arq.constants import default_queue_name
from arq.worker import Retry
from sqlalchemy import update

from stripesync.activity.hooks import contacts_changed
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.models import Account, Contact
from stripesync.sync.queue import sync_job_id, use_queue
from stripesync.sync.tasks import platform_client, sweep_sync, sync_account_job
from stripesync.worker import create_worker
from tests.fakes.constant_contact import FakeConstantContact
from tests.sync.conftest import ACCOUNT, add_contacts, contacts_by_email, make_account, push_calls


async def _queued(ctx: dict[str, Any]) -> list[str]:
    return [j.decode() for j in await ctx["redis"].zrange(default_queue_name, 0, -1)]


async def _run_worker(settings: Settings, ctx: dict[str, Any]) -> None:
    worker = create_worker(settings, burst=True, poll_delay=0.05, cron_jobs=[])
    try:
        await worker.main()
    finally:
        await worker.close()
        use_queue(ctx["redis"])  # the worker's shutdown unset the module's queue


async def _change(factory: SessionFactory, contact_id: int, name: str) -> None:
    """One change to a contact, applied as activity applies one: version bumped, hooks run."""
    async with transaction(factory) as session:
        await session.execute(
            update(Contact)
            .where(Contact.id == contact_id)
            .values(name=name, version=Contact.version + 1)
        )
        await contacts_changed(session, ACCOUNT, [contact_id])


async def test_ten_quick_changes_cost_one_queued_job_and_one_platform_call(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    ids = await add_contacts(session_factory, ACCOUNT, {"ann@x.io": "implied"})
    await _run_worker(sync_settings, sync_ctx)  # first sync: lists, custom fields, the first push
    assert push_calls(fake_cc) == ["/v3/activities/contacts_json_import"]
    before = len(fake_cc.api_requests())

    for n in range(10):
        await _change(session_factory, ids["ann@x.io"], f"Ann {n}")
    assert await _queued(sync_ctx) == [sync_job_id(ACCOUNT)]
    await _run_worker(sync_settings, sync_ctx)

    # Everything but status polls (GET /activities/{id}): one call.
    new = fake_cc.api_requests()[before:]
    pushes = [r for r in new if not (r.method == "GET" and "/activities/" in r.path)]
    assert [r.path for r in pushes] == ["/v3/activities/contacts_json_import"]
    assert pushes[0].body["import_data"][0]["first_name"] == "Ann"
    contact = (await contacts_by_email(session_factory, ACCOUNT))["ann@x.io"]
    assert contact.synced_version == contact.version and contact.sync_state == "ok"


async def test_a_change_made_during_a_run_is_pushed_by_the_same_job_and_nothing_is_lost(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    ids = await add_contacts(
        session_factory, ACCOUNT, {"ann@x.io": "implied", "bob@x.io": "implied"}
    )
    fake_cc.completed_after = 1.0  # the platform is still importing when Ann changes

    job = asyncio.create_task(sync_account_job(sync_ctx, ACCOUNT, poll_interval=0.02))
    async with asyncio.timeout(10):
        while not fake_cc.api_requests("contacts_json_import"):
            await asyncio.sleep(0.01)
    await _change(session_factory, ids["ann@x.io"], "Ann Lee")
    fake_cc.completed_after = 0.05
    result = await job

    imports = fake_cc.api_requests("contacts_json_import")
    assert [[row["email"] for row in r.body["import_data"]] for r in imports] == [
        ["ann@x.io", "bob@x.io"],
        ["ann@x.io"],
    ]
    assert (result["state"], result["imported"]) == ("done", 3)
    ann = fake_cc.contact("ann@x.io")
    assert ann is not None and (ann.first_name, ann.last_name) == ("Ann", "Lee")
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())


async def test_two_runs_for_one_account_never_overlap(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    fake_cc.completed_after = 0.5  # the first run is still polling when the second starts
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {f"p{n}@x.io": "implied" for n in range(20)})

    results = await asyncio.gather(
        sync_account_job(sync_ctx, ACCOUNT, poll_interval=0.05),
        sync_account_job(sync_ctx, ACCOUNT, poll_interval=0.05),
        return_exceptions=True,
    )

    assert sum(isinstance(r, Retry) for r in results) == 1
    assert push_calls(fake_cc) == ["/v3/activities/contacts_json_import"]
    assert len(fake_cc.api_requests("/v3/contact_lists")) == 9  # the built-ins, once each


async def test_sweeper_enqueues_lagging_accounts_but_not_deferred_or_tokenless_ones(
    sync_ctx: dict[str, Any], sync_settings: Settings, session_factory: SessionFactory
) -> None:
    await make_account(session_factory, sync_settings, "acc_lag")
    await make_account(session_factory, sync_settings, "acc_deferred")
    async with transaction(session_factory) as session:
        session.add(Account(id="acc_no_cc", name="No CC", owner_email="o@x.io"))
    await add_contacts(session_factory, "acc_lag", {"a@x.io": "implied"})
    await add_contacts(session_factory, "acc_deferred", {"b@x.io": "implied"})
    await add_contacts(session_factory, "acc_no_cc", {"c@x.io": "implied"})
    async with transaction(session_factory) as session:
        await session.execute(
            update(Contact)
            .where(Contact.account_id == "acc_deferred")
            .values(sync_deferred_until=utcnow() + timedelta(hours=3))
        )
    await sync_ctx["redis"].flushdb()  # the enqueues after commit: pretend they were lost

    assert await sweep_sync(sync_ctx) == 1
    assert await _queued(sync_ctx) == [sync_job_id("acc_lag")]
    assert await sweep_sync(sync_ctx) == 0  # already queued: not twice


async def test_contacts_synced_by_the_worker_leave_nothing_for_the_sweeper(
    sync_ctx: dict[str, Any], sync_settings: Settings, session_factory: SessionFactory
) -> None:
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied", "b@x.io": "none"})
    await _run_worker(sync_settings, sync_ctx)
    assert await sweep_sync(sync_ctx) == 0


async def test_ten_concurrent_clients_with_an_expired_token_make_exactly_one_refresh(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    fake_cc.tokens = set()  # only tokens the fake's OAuth endpoint issued are valid
    fake_cc.token_delay = 0.3  # everyone is waiting while the one refresh is in flight
    fake_cc.issue_refresh_token("rt-0")
    await make_account(session_factory, sync_settings, expires_in=-timedelta(minutes=1))

    clients = [platform_client(sync_ctx, ACCOUNT) for _ in range(10)]
    found = await asyncio.gather(*(c.find_contact_list("Nope") for c in clients))

    assert found == [None] * 10
    assert [t["refresh_token"] for t in fake_cc.token_requests] == ["rt-0"]
    assert {r.token for r in fake_cc.api_requests()} == {"fake-access-1"}
    async with session_factory() as session:
        account = await session.get(Account, ACCOUNT)
    assert account is not None and account.cc_refresh_token_encrypted is not None
    # The rotated refresh token was stored: the next refresh uses it, not the spent one.
    assert crypto.decrypt(sync_settings, account.cc_refresh_token_encrypted) == "fake-refresh-1"


async def test_token_the_platform_rejects_is_refreshed_once_for_ten_concurrent_clients(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    fake_cc.tokens = set()  # our stored token looks fresh, but the platform revoked it
    fake_cc.token_delay = 0.2
    fake_cc.issue_refresh_token("rt-0")
    await make_account(session_factory, sync_settings, expires_in=timedelta(hours=20))

    clients = [platform_client(sync_ctx, ACCOUNT) for _ in range(10)]
    await asyncio.gather(*(c.find_contact_list("Nope") for c in clients))

    assert len(fake_cc.token_requests) == 1
    answered = [r for r in fake_cc.api_requests() if r.status == 200]
    assert len(answered) == 10 and {r.token for r in answered} == {"fake-access-1"}


async def test_account_without_a_usable_token_is_not_synced_and_says_why(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    # The refresh token is unknown to the platform: refused, recorded on the account.
    await make_account(session_factory, sync_settings, expires_in=-timedelta(minutes=1))
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})

    result = await sync_account_job(sync_ctx, ACCOUNT)

    assert result["state"] == "no_platform_token"
    assert fake_cc.api_requests() == []
    async with session_factory() as session:
        account = await session.get(Account, ACCOUNT)
    assert account is not None and account.cc_token_error == "refresh refused: invalid_grant"
    assert await sweep_sync(sync_ctx) == 0  # waits for new credentials


@pytest.mark.parametrize("platform_down", [503, 0])
async def test_platform_down_after_the_clients_retries_retries_the_job_later(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    platform_down: int,
) -> None:
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    fake_cc.inject(platform_down, count=100)

    with pytest.raises(Retry):
        await sync_account_job(sync_ctx, ACCOUNT)

    contact = (await contacts_by_email(session_factory, ACCOUNT))["a@x.io"]
    assert contact.synced_version < contact.version  # still lagging: nothing lost
