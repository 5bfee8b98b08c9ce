"""The sync engine against the fake platform: the right call per case, permission kept."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from stripesync.clients.constant_contact import ConstantContactClient, PlatformError
from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Contact, ContactSegment, Segment, SyncBatch
from stripesync.sync.service import sync_account
from tests.fakes.constant_contact import FakeConstantContact
from tests.sync.conftest import ACCOUNT


@pytest.fixture
async def client(fake_cc: FakeConstantContact) -> AsyncIterator[ConstantContactClient]:
    async def token(force_refresh: bool) -> str:
        return "t"

    async with httpx.AsyncClient() as http:
        yield ConstantContactClient(http, api_base=fake_cc.url, token=token, backoff_base=0.01)


async def _setup(
    session_factory: SessionFactory, fake: FakeConstantContact, people: dict[str, str]
) -> tuple[str, dict[str, int]]:
    """An account with one segment (mirrored as a platform list) holding these people."""
    list_id = fake._create_list({"name": "Customers"})[1]["list_id"]
    ids: dict[str, int] = {}
    async with transaction(session_factory) as session:
        session.add(Account(id=ACCOUNT, name="Shop", owner_email="owner@shop.test"))
        await session.flush()
        segment = Segment(
            account_id=ACCOUNT, name="Customers", kind="builtin", platform_list_id=list_id
        )
        session.add(segment)
        for email, consent in people.items():
            contact = Contact(
                account_id=ACCOUNT,
                email=email,
                email_domain=email.split("@")[1],
                consent_state=consent,
                name="Ann Lee",
            )
            session.add(contact)
            await session.flush()
            ids[email] = contact.id
            session.add(ContactSegment(contact_id=contact.id, segment_id=segment.id))
    return list_id, ids


def _emails_sent(fake: FakeConstantContact) -> set[str]:
    sent: set[str] = set()
    for request in fake.api_requests():
        body = request.body or {}
        if "email_address" in body:
            sent.add(body["email_address"])
        for row in body.get("import_data", []):
            sent.add(row["email"])
    return sent


async def test_implied_contacts_go_in_one_import_and_confirmed_by_sign_up_form(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    people = {f"i{n}@x.io": "implied" for n in range(50)}
    people["c@x.io"] = "confirmed"
    list_id, _ = await _setup(session_factory, fake_cc, people)

    report = await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)

    assert (report.imported, report.signed_up, report.errors) == (50, 1, 0)
    assert len(fake_cc.api_requests("contacts_json_import")) == 1
    assert len(fake_cc.api_requests("sign_up_form")) == 1
    assert fake_cc.contact("i7@x.io").permission == "implicit"  # type: ignore[union-attr]
    confirmed = fake_cc.contact("c@x.io")
    assert confirmed is not None and confirmed.permission == "explicit"
    assert confirmed.list_ids == {list_id}
    async with transaction(session_factory) as session:
        rows = {c.email: c for c in await session.scalars(select(Contact))}
        batch = (await session.scalars(select(SyncBatch))).one()
    assert all(c.synced_version == c.version and c.sync_state == "ok" for c in rows.values())
    assert rows["c@x.io"].platform_contact_id == confirmed.contact_id
    assert rows["i3@x.io"].synced_lists == [list_id]
    assert batch.state == "completed"


async def test_contacts_without_permission_never_reach_the_platform(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    people = {
        "none@x.io": "none",
        "pending@x.io": "pending",
        "declined@x.io": "declined",
        "unsub@x.io": "unsubscribed",
        "ok@x.io": "implied",
    }
    await _setup(session_factory, fake_cc, people)
    report = await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    assert report.skipped == 4
    assert _emails_sent(fake_cc) == {"ok@x.io"}


async def test_a_second_run_with_nothing_changed_makes_no_contact_calls(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    await _setup(session_factory, fake_cc, {"a@x.io": "implied", "b@x.io": "confirmed"})
    await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    before = len(fake_cc.api_requests())
    await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    assert len(fake_cc.api_requests()) == before


async def test_permanent_refusal_marks_the_contact_error_with_the_platform_message(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    await _setup(session_factory, fake_cc, {"c@x.io": "confirmed"})
    fake_cc.inject(400, error_key="email_address.invalid", path_contains="sign_up_form")
    report = await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    assert report.errors == 1
    async with transaction(session_factory) as session:
        contact = (await session.scalars(select(Contact))).one()
    assert contact.sync_state == "error"
    assert contact.sync_error == "injected 400"


async def test_removed_segment_list_is_removed_by_platform_id(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    list_id, ids = await _setup(session_factory, fake_cc, {"c@x.io": "confirmed"})
    await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    async with transaction(session_factory) as session:
        await session.execute(ContactSegment.__table__.delete())
        contact = await session.get(Contact, ids["c@x.io"])
        assert contact is not None
        contact.version += 1
    report = await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    assert report.removed == 1
    removal = fake_cc.api_requests("remove_list_memberships")[0].body
    assert removal["list_ids"] == [list_id]
    assert fake_cc.contact("c@x.io").list_ids == set()  # type: ignore[union-attr]


def test_fewer_collections_while_any_read_runs_then_as_before() -> None:
    import gc

    from stripesync.sync import service

    before = gc.get_threshold()
    with service._fewer_collections():
        with service._fewer_collections():
            assert gc.get_threshold() == service._GC_THRESHOLDS_WHILE_READING
        assert gc.get_threshold() == service._GC_THRESHOLDS_WHILE_READING  # one still reads
    assert gc.get_threshold() == before


async def test_someone_moving_lists_is_not_imported_before_the_old_list_is_left(
    session_factory: SessionFactory, fake_cc: FakeConstantContact, client: ConstantContactClient
) -> None:
    old_list, ids = await _setup(session_factory, fake_cc, {"m@x.io": "implied"})
    await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)
    imports_before = len(fake_cc.api_requests("contacts_json_import"))
    new_list = fake_cc._create_list({"name": "Movers"})[1]["list_id"]
    async with transaction(session_factory) as session:
        await session.execute(ContactSegment.__table__.delete())
        mover = Segment(account_id=ACCOUNT, name="Movers", kind="custom", platform_list_id=new_list)
        session.add(mover)
        await session.flush()
        session.add(ContactSegment(contact_id=ids["m@x.io"], segment_id=mover.id))
        contact = await session.get(Contact, ids["m@x.io"])
        assert contact is not None
        contact.version += 1
    fake_cc.fail_next_activities = 1  # the removal from the old list fails

    with pytest.raises(PlatformError):
        await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)

    # Not put on the new list (nor marked synced there) while still on the old one.
    assert len(fake_cc.api_requests("contacts_json_import")) == imports_before
    assert fake_cc.contact("m@x.io").list_ids == {old_list}  # type: ignore[union-attr]
    async with transaction(session_factory) as session:
        contact = await session.get(Contact, ids["m@x.io"])
        assert contact is not None
        assert contact.synced_version < contact.version
