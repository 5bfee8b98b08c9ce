"""Kept current: the contacts-changed hook, the scheduled full recompute, exact counts, and
a recompute that changes nothing bumps nothing."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import time_machine
from sqlalchemy import delete

from stripesync.activity.hooks import contacts_changed
from stripesync.cli import main as cli_main
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Contact
from stripesync.segments import hooks  # noqa: F401  (registers the hook, as load_handlers does)
from stripesync.segments.tasks import recompute_accounts, recompute_segments
from stripesync.webhooks.dispatch import HANDLER_MODULES
from stripesync.worker import create_worker
from tests.conftest import platform_headers
from tests.segments.conftest import NOW, add_contact, counts, memberships, set_activity, versions

DAY = timedelta(days=1)


async def test_segments_hook_is_wired_through_the_handler_modules() -> None:
    assert "stripesync.segments.hooks" in HANDLER_MODULES


async def test_worker_runs_the_recompute_hourly_and_the_outbox_sweeper(settings: Settings) -> None:
    worker = create_worker(settings, burst=True)
    crons = {job.name: job for job in worker.cron_jobs}
    assert crons["cron:recompute_segments_cron"].minute == {7}
    assert "cron:deliver_automation" in crons
    assert {"recompute_segments", "deliver_automation"} <= set(worker.functions)
    await worker.close()


async def test_a_changed_contact_is_recomputed_in_the_same_transaction(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    contact = await add_contact(f)
    async with transaction(f) as session:
        await contacts_changed(session, account, [contact])
    assert {k for k, m in (await memberships(f)).items() if contact in m} == {"all", "prospects"}

    async with transaction(f) as session:  # the activity code applies a first purchase
        row = await session.get(Contact, contact)
        assert row is not None
        row.purchase_count, row.last_purchase_at = 1, NOW
        row.total_spent = {"usd": 2500}
        row.version += 1
        await session.flush()
        await contacts_changed(session, account, [contact])
        version_inside = row.version
    found = await memberships(f)
    assert {k for k, m in found.items() if contact in m} == {"all", "first_time", "recent"}
    # The lists changed with the activity, in the transaction that already bumped the
    # version: that bump carries both (no second rewrite of the row).
    assert (await versions(f))[contact] == version_inside
    assert (await counts(f))["prospects"] == 0 and (await counts(f))["first_time"] == 1


async def test_a_membership_change_bumps_the_version_unless_its_transaction_did(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    contact = await add_contact(f)
    async with transaction(f) as session:
        await contacts_changed(session, account, [contact])
    before = (await versions(f))[contact]

    async with transaction(f) as session:  # lists move, nothing else wrote the contact
        row = await session.get(Contact, contact)
        assert row is not None
        row.consent_state = "declined"  # written, but without a new version
        row.synced_version = row.version  # ... as a sync settling it would
        await session.flush()
        await contacts_changed(session, account, [contact])
    assert not any(contact in m for m in (await memberships(f)).values())
    assert (await versions(f))[contact] == before + 1  # a written row is no bump by itself

    async with transaction(f) as session:  # memberships move alone: one bump
        row = await session.get(Contact, contact)
        assert row is not None
        row.consent_state = "implied"
        row.synced_version = row.version
        await session.flush()
    async with transaction(f) as session:
        await contacts_changed(session, account, [contact])
    assert contact in (await memberships(f))["all"]
    assert (await versions(f))[contact] == before + 2


async def test_a_rolled_back_event_leaves_memberships_as_they_were(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    contact = await add_contact(f)
    async with transaction(f) as session:
        await contacts_changed(session, account, [contact])
    try:
        async with transaction(f) as session:
            row = await session.get(Contact, contact)
            assert row is not None
            row.purchase_count = 2
            await session.flush()
            await contacts_changed(session, account, [contact])
            raise RuntimeError("handler failed after the hook")
    except RuntimeError:
        pass
    assert contact in (await memberships(f))["prospects"]
    assert (await counts(f))["repeat"] == 0


async def test_hook_ignores_contacts_of_other_accounts(
    session_factory: SessionFactory, account: str
) -> None:
    async with transaction(session_factory) as session:
        session.add(Account(id="acc_other", name="Other", owner_email="o@other.example"))
    theirs = await add_contact(session_factory, "acc_other")
    async with transaction(session_factory) as session:
        await contacts_changed(session, account, [theirs])
    assert await memberships(session_factory, "acc_other") == {}
    assert await memberships(session_factory) == {}


async def test_full_recompute_moves_people_with_time_and_only_bumps_those_who_moved(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    moving = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 30 * DAY)
    staying = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 5 * DAY)
    first = await recompute_accounts(f)
    assert first["accounts"] == 1 and first["contacts_changed"] == 2
    before = await versions(f)

    again = await recompute_accounts(f)
    assert again == {"accounts": 1, "contacts_changed": 0, "entered": 0, "exited": 0}
    assert await versions(f) == before  # nothing changed, nothing bumped

    frozen.shift(DAY)
    moved = await recompute_accounts(f, account)
    assert moved["contacts_changed"] == 1 and moved["exited"] == 1
    after = await versions(f)
    assert after[moving] == before[moving] + 1 and after[staying] == before[staying]
    assert (await memberships(f))["recent"] == {staying}
    assert (await counts(f))["recent"] == 1


async def test_counts_are_exact_after_the_job_even_after_contacts_were_deleted(
    session_factory: SessionFactory,
    app_client: httpx.AsyncClient,
    account: str,
    worker_ctx: dict[str, object],
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    ids = [await add_contact(f, purchase_count=2) for _ in range(4)]
    await recompute_segments(worker_ctx)
    async with transaction(f) as session:  # erasure deletes rows; memberships go by cascade
        await session.execute(delete(Contact).where(Contact.id.in_(ids[:2])))
    await recompute_segments(worker_ctx, account)
    segments = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    by_key = {s["key"]: s["member_count"] for s in segments["segments"]}
    assert by_key["repeat"] == 2 and by_key["all"] == 2 and by_key["prospects"] == 0

    from stripesync.segments.service import segments_summary

    async with transaction(f) as session:
        summary = await segments_summary(session, account)
    assert [(s.key, s.member_count) for s in summary][:4] == [
        ("all", 2),
        ("prospects", 0),
        ("first_time", 0),
        ("repeat", 2),
    ]


async def test_losing_permission_takes_a_contact_off_every_segment(
    session_factory: SessionFactory, account: str
) -> None:
    f = session_factory
    contact = await add_contact(f, purchase_count=3)
    await recompute_accounts(f)
    await set_activity(f, contact, consent_state="unsubscribed")
    async with transaction(f) as session:
        await contacts_changed(session, account, [contact])
    assert not any(contact in members for members in (await memberships(f)).values())
    assert (await counts(f))["all"] == 0


def test_cli_recompute_runs_the_full_recompute(
    database_url: str, monkeypatch: object, capsys: object
) -> None:
    import pytest

    mp: pytest.MonkeyPatch = monkeypatch  # type: ignore[assignment]
    mp.setenv("STRIPESYNC_DATABASE_URL", database_url)
    mp.setenv("STRIPESYNC_LOG_FORMAT", "console")
    mp.delenv("STRIPESYNC_AUTOMATION_WEBHOOK_URL", raising=False)
    cli_main(["recompute", "--account", "nobody"])
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert json.loads(out) == {"accounts": 0, "contacts_changed": 0, "entered": 0, "exited": 0}
