"""Sync runs against the fake platform: lists per segment, quota deferral, batch limits,
activity polling and failures, a crash mid-run, failures visible in the contacts API."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import time_machine
from sqlalchemy import func, insert, select, text, update

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.ratelimit import next_utc_midnight
from stripesync.models import Contact, ContactSegment, Segment, SyncBatch
from stripesync.segments import service as segments
from stripesync.sync.service import sync_account
from stripesync.sync.tasks import platform_client
from tests.conftest import platform_headers
from tests.fakes.constant_contact import FakeConstantContact
from tests.sync.conftest import ACCOUNT, add_contacts, contacts_by_email, make_account, push_calls

N_CONTACTS = 40_001


async def _sync(ctx: dict[str, Any], account_id: str = ACCOUNT) -> Any:
    return await sync_account(
        ctx["session_factory"], platform_client(ctx, account_id), account_id, poll_interval=0.02
    )


async def _segment_lists(factory: SessionFactory) -> dict[str, str | None]:
    async with factory() as session:
        rows = await session.execute(select(Segment.name, Segment.platform_list_id))
        return {name: list_id for name, list_id in rows.all()}


async def test_every_segment_gets_one_platform_list_and_a_taken_name_is_reused(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    taken = fake_cc._create_list({"name": "Stripe - Repeat Customers"})[1]["list_id"]
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})

    await _sync(sync_ctx)
    await _sync(sync_ctx)  # idempotent: no list made twice

    lists = await _segment_lists(session_factory)
    assert len(lists) == 9 and all(lists.values())
    assert lists["Stripe - Repeat Customers"] == taken  # the 409 looked it up
    assert len(fake_cc.lists) == 9
    assert len(fake_cc.api_requests("/v3/contact_lists")) == 9 + 1  # 9 POSTs (one 409), 1 GET
    # Custom fields: created once, filled on the push.
    assert sorted(f["label"] for f in fake_cc.custom_fields.values()) == [
        "Last purchase date",
        "Lifetime spend",
        "Purchase count",
    ]
    [row] = fake_cc.api_requests("contacts_json_import")[0].body["import_data"]
    assert row["cf:Purchase_count"] == "0"


async def test_members_of_a_new_custom_segment_reach_its_new_list(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@vip.io": "implied", "b@x.io": "implied"})
    await _sync(sync_ctx)
    async with transaction(session_factory) as session:
        await segments.create_custom(
            session,
            ACCOUNT,
            "VIP domain",
            {"field": "email_domain", "op": "eq", "value": "vip.io"},
        )
    await _sync(sync_ctx)

    vip = (await _segment_lists(session_factory))["VIP domain"]
    assert vip is not None and fake_cc.lists[vip]["name"] == "VIP domain"
    assert vip in fake_cc.contact("a@vip.io").list_ids  # type: ignore[union-attr]
    assert vip not in fake_cc.contact("b@x.io").list_ids  # type: ignore[union-attr]


async def test_deleted_custom_segment_has_its_platform_list_deleted_and_is_forgotten(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@vip.io": "implied"})
    async with transaction(session_factory) as session:
        created = await segments.create_custom(
            session, ACCOUNT, "VIP", {"field": "email_domain", "op": "eq", "value": "vip.io"}
        )
    await _sync(sync_ctx)
    vip = (await _segment_lists(session_factory))["VIP"]
    async with transaction(session_factory) as session:
        await segments.delete_custom(session, ACCOUNT, int(created.id))

    await _sync(sync_ctx)

    assert vip not in fake_cc.lists
    assert "VIP" not in await _segment_lists(session_factory)  # the tombstone is gone
    contact = (await contacts_by_email(session_factory, ACCOUNT))["a@vip.io"]
    assert vip not in contact.synced_lists and contact.synced_version == contact.version
    assert fake_cc.api_requests("remove_list_memberships") == []  # the list went whole
    assert fake_cc.contact("a@vip.io").status == "active"  # type: ignore[union-attr]


async def test_out_of_quota_defers_to_the_next_utc_day_and_resumes_losing_nothing(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    # The token outlives the trip to the next UTC day, whatever the time now (a 20-hour one
    # would expire on the way before 04:00 UTC, and the fake refuses its refresh).
    await make_account(session_factory, sync_settings, expires_in=timedelta(days=2))
    await _sync(sync_ctx)  # lists and fields exist
    await add_contacts(session_factory, ACCOUNT, {f"p{n}@x.io": "implied" for n in range(5)})
    await add_contacts(session_factory, ACCOUNT, {"c@x.io": "confirmed"})
    fake_cc.inject(429, error_key="quota_exceeded", shape="object", count=1)

    report = await _sync(sync_ctx)

    tomorrow = next_utc_midnight(utcnow())
    assert report.deferred_until == tomorrow and report.deferred == 6
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert {(c.sync_state, c.sync_deferred_until) for c in stored.values()} == {
        ("deferred", tomorrow)
    }
    # Every worker stops for the day: no further call reaches the platform.
    calls = len(fake_cc.api_requests())
    again = await _sync(sync_ctx)
    assert again.deferred_until == tomorrow and len(fake_cc.api_requests()) == calls

    # The next UTC day: the budget is fresh (Redis's day key) and the deferral has passed.
    for key in await sync_ctx["redis"].keys("stripesync:ratelimit:*:day:*"):
        await sync_ctx["redis"].delete(key)
    with time_machine.travel(tomorrow + timedelta(seconds=1), tick=True):
        resumed = await _sync(sync_ctx)
    assert (resumed.imported, resumed.signed_up, resumed.deferred_until) == (5, 1, None)
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())
    assert all(fake_cc.contact(email) is not None for email in stored)


async def test_40001_contacts_are_imported_in_two_calls_and_none_is_dropped(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    fake_cc.keep_bodies = False
    await make_account(session_factory, sync_settings)
    async with transaction(session_factory) as session:
        await segments.ensure_builtin_segments(session, ACCOUNT)
    await _sync(sync_ctx)
    async with transaction(session_factory) as session:
        await session.execute(
            insert(Contact),
            [
                {
                    "account_id": ACCOUNT,
                    "email": f"c{n}@x.io",
                    "email_domain": "x.io",
                    "consent_state": "implied",
                }
                for n in range(N_CONTACTS)
            ],
        )
        # Members of "all", as the recompute would make them (set-based, quicker here).
        await session.execute(
            text(
                "INSERT INTO contact_segments (contact_id, segment_id)"
                " SELECT c.id, s.id FROM contacts c JOIN segments s"
                " ON s.account_id = c.account_id AND s.key = 'all'"
            )
        )

    report = await _sync(sync_ctx)

    imports = [a for a in fake_cc.activities.values() if a.kind == "contacts_json_import"]
    assert sorted(len(a.payload["rows"]) for a in imports) == [1, 40_000]
    assert [a.dropped for a in imports] == [0, 0]
    assert report.imported == N_CONTACTS and len(fake_cc.contacts) == N_CONTACTS


async def test_removals_go_by_platform_id_at_most_500_per_call(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    people = {f"r{n}@x.io": "implied" for n in range(1_001)}
    await add_contacts(session_factory, ACCOUNT, people)
    await _sync(sync_ctx)
    # Learn the platform ids (as a previous removal's lookups would have).
    async with transaction(session_factory) as session:
        for email in people:
            await session.execute(
                update(Contact)
                .where(Contact.email == email)
                .values(platform_contact_id=fake_cc.contact(email).contact_id)  # type: ignore[union-attr]
            )
    all_list = (await _segment_lists(session_factory))["Stripe - All Customers"]
    assert all_list is not None

    # Everyone declines: they come off every list we put them on.
    async with transaction(session_factory) as session:
        await session.execute(
            update(Contact).values(consent_state="declined", version=Contact.version + 1)
        )
        await segments.recompute_account(session, ACCOUNT)
    report = await _sync(sync_ctx)

    removals = fake_cc.api_requests("remove_list_memberships")
    assert sorted(len(r.body["source"]["contact_ids"]) for r in removals) == [1, 500, 500]
    assert report.removed == 1_001
    assert all(not c.list_ids for c in fake_cc.contacts.values())
    assert fake_cc.api_requests("/v3/contacts") == []  # no lookups: the ids were known


async def test_import_is_polled_until_its_activity_completes(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    fake_cc.completed_after = 0.4
    await make_account(session_factory, sync_settings)
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})

    await _sync(sync_ctx)

    polls = [r for r in fake_cc.api_requests("/v3/activities/") if r.method == "GET"]
    assert len(polls) >= 2  # seen unfinished at least once, then completed
    async with session_factory() as session:
        batch = (await session.scalars(select(SyncBatch))).one()
    assert batch.state == "completed" and batch.activity_id is not None
    assert fake_cc.contact("a@x.io") is not None


async def test_failed_activity_and_row_errors_are_recorded_per_contact(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    app_client: httpx.AsyncClient,
) -> None:
    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)
    # One batch fails whole; in the other, the platform rejects one row.
    await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    fake_cc.fail_next_activities = 1
    await _sync(sync_ctx)
    long_local = "x" * 90  # the platform refuses addresses over 80 characters
    await add_contacts(
        session_factory, ACCOUNT, {"ok@x.io": "implied", f"{long_local}@x.io": "implied"}
    )
    await _sync(sync_ctx)

    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert (stored["a@x.io"].sync_state, stored["a@x.io"].sync_error) == (
        "error",
        "Activity failed (injected)",
    )
    bad = stored[f"{long_local}@x.io"]
    assert bad.sync_state == "error" and bad.sync_error == "Row 1: invalid email address"
    assert stored["ok@x.io"].sync_state == "ok"
    shown = await app_client.get(
        f"/v1/accounts/{ACCOUNT}/contacts",
        params={"email": f"{long_local}@x.io"},
        headers=platform_headers,
    )
    assert shown.status_code == 200
    assert shown.json()["sync"]["state"] == "error"
    assert shown.json()["sync"]["error"] == "Row 1: invalid email address"


async def test_permanent_refusal_is_shown_in_the_contacts_api_and_counted(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
    app_client: httpx.AsyncClient,
) -> None:
    from prometheus_client import REGISTRY

    def errors_counted() -> float:
        return (
            REGISTRY.get_sample_value("stripesync_sync_contacts_total", {"outcome": "error"}) or 0.0
        )

    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)
    await add_contacts(session_factory, ACCOUNT, {"c@x.io": "confirmed"})
    fake_cc.inject(400, error_key="email_address.invalid", path_contains="sign_up_form")
    before = errors_counted()

    await _sync(sync_ctx)

    answer = await app_client.get(
        f"/v1/accounts/{ACCOUNT}/contacts", params={"email": "c@x.io"}, headers=platform_headers
    )
    sync = answer.json()["sync"]
    assert (sync["state"], sync["error"], sync["on_platform"]) == ("error", "injected 400", False)
    assert errors_counted() == before + 1


async def test_a_run_that_dies_while_polling_is_resumed_without_importing_twice(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)
    await add_contacts(session_factory, ACCOUNT, {f"p{n}@x.io": "implied" for n in range(30)})
    # The import is accepted, then the platform vanishes while we poll: the run dies.
    fake_cc.inject(0, count=50, path_contains="/v3/activities/", method="GET")
    try:
        await _sync(sync_ctx)
    except Exception as exc:  # the job would retry later
        assert getattr(exc, "retryable", False)
    async with session_factory() as session:
        started = (await session.scalars(select(SyncBatch))).one()
    assert started.state == "started" and started.activity_id is not None

    fake_cc.injections.clear()
    await _sync(sync_ctx)  # the re-run

    assert len(fake_cc.api_requests("contacts_json_import")) == 1
    stored = await contacts_by_email(session_factory, ACCOUNT)
    assert all(c.sync_state == "ok" and c.synced_version == c.version for c in stored.values())
    all_list = (await _segment_lists(session_factory))["Stripe - All Customers"]
    assert all(all_list in fake_cc.contact(e).list_ids for e in stored)  # type: ignore[union-attr]
    async with session_factory() as session:
        states = (
            await session.execute(select(SyncBatch.state, func.count()).group_by(SyncBatch.state))
        ).all()
    assert states == [("completed", 1)]


async def test_withdrawn_permission_takes_the_contact_off_our_lists_and_sends_nothing_else(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    ids = await add_contacts(session_factory, ACCOUNT, {"a@x.io": "implied"})
    await _sync(sync_ctx)
    assert fake_cc.contact("a@x.io").list_ids  # type: ignore[union-attr]
    async with transaction(session_factory) as session:
        await session.execute(
            text("UPDATE contacts SET consent_state = 'unsubscribed', version = version + 1")
        )
        await segments.recompute_account(session, ACCOUNT)
    pushes_before = push_calls(fake_cc)

    await _sync(sync_ctx)

    assert push_calls(fake_cc)[len(pushes_before) :] == ["/v3/activities/remove_list_memberships"]
    assert fake_cc.contact("a@x.io").list_ids == set()  # type: ignore[union-attr]
    async with session_factory() as session:
        contact = await session.get(Contact, ids["a@x.io"])
        members = await session.scalar(
            select(func.count())
            .select_from(ContactSegment)
            .where(ContactSegment.contact_id == ids["a@x.io"])
        )
    assert contact is not None and contact.synced_lists == [] and members == 0
    assert fake_cc.resubscribe_attempts == []


async def _set_activity(
    session_factory: SessionFactory, *, purchase_count: int, failed: bool
) -> None:
    """Every contact's payment activity changes; segments follow (the change feed moves)."""
    async with transaction(session_factory) as session:
        await session.execute(
            text(
                "UPDATE contacts SET purchase_count = :n, has_failed_since_last_purchase = :f,"
                " version = version + 1"
            ),
            {"n": purchase_count, "f": failed},
        )
        await segments.recompute_account(session, ACCOUNT)


async def test_a_run_that_never_heard_back_from_an_accepted_import_still_removes_stale_lists(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)  # lists and custom fields exist
    ids = await add_contacts(session_factory, ACCOUNT, {"late@x.io": "implied"})
    await _set_activity(session_factory, purchase_count=1, failed=True)

    # The platform imports the contact onto its lists, but every answer is lost: the run
    # dies without learning the activity id (as when Postgres restarts mid-run).
    fake_cc.inject(0, count=10, path_contains="contacts_json_import", after_processing=True)
    try:
        await _sync(sync_ctx)
    except Exception as exc:  # the job would retry later
        assert getattr(exc, "retryable", False)
    failed_list = (await _segment_lists(session_factory))["Stripe - Failed Payments"]
    assert failed_list is not None
    assert failed_list in fake_cc.contact("late@x.io").list_ids  # type: ignore[union-attr]

    # Meanwhile the person paid: they leave the Failed Payments segment.
    fake_cc.injections.clear()
    await _set_activity(session_factory, purchase_count=2, failed=False)
    await _sync(sync_ctx)

    async with session_factory() as session:
        contact = await session.get(Contact, ids["late@x.io"])
        desired = set(
            await session.scalars(
                select(Segment.platform_list_id)
                .join(ContactSegment, ContactSegment.segment_id == Segment.id)
                .where(ContactSegment.contact_id == ids["late@x.io"])
            )
        )
    assert contact is not None and contact.sync_state == "ok"
    assert failed_list not in desired
    assert fake_cc.contact("late@x.io").list_ids == desired  # type: ignore[union-attr]


async def test_custom_fields_carry_spend_in_one_currency_and_leave_mixed_currencies_unsummed(
    sync_ctx: dict[str, Any],
    sync_settings: Settings,
    session_factory: SessionFactory,
    fake_cc: FakeConstantContact,
) -> None:
    await make_account(session_factory, sync_settings)
    await _sync(sync_ctx)  # lists and custom fields exist
    bought = utcnow().replace(year=2025, month=3, day=14)
    await add_contacts(
        session_factory,
        ACCOUNT,
        {"one@x.io": "implied"},
        purchase_count=3,
        total_spent={"usd": 12345},
        last_purchase_at=bought,
    )
    await add_contacts(
        session_factory,
        ACCOUNT,
        {"two@x.io": "implied"},
        purchase_count=2,
        total_spent={"usd": 5000, "eur": 700},
        last_purchase_at=bought,
    )

    report = await _sync(sync_ctx)

    assert report.imported == 2
    field_of = {f["label"]: field_id for field_id, f in fake_cc.custom_fields.items()}
    one, two = fake_cc.contact("one@x.io"), fake_cc.contact("two@x.io")
    assert one is not None and two is not None
    assert one.custom_fields == {
        field_of["Lifetime spend"]: "123.45",
        field_of["Purchase count"]: "3",
        field_of["Last purchase date"]: "2025-03-14",
    }
    # Spend in two currencies has no one amount to show: no sum of dollars and euros.
    assert two.custom_fields == {
        field_of["Purchase count"]: "2",
        field_of["Last purchase date"]: "2025-03-14",
    }
