"""Property: whatever the consent histories, interleaved with sync runs, the platform never
receives a contact without permission, and nobody who unsubscribed is ever re-subscribed.

Each example is one account with a few contacts and a random sequence of steps: consent
changes through the real rules (`record_consent`: none → pending → confirmed/declined,
implied, unsubscribed at any time, attempts to re-confirm after unsubscribing), the person
unsubscribing on the platform (which reports it to us), purchases that move them between
segments, memberships left stale (a recompute that has not caught up yet: the sync engine
must not trust segments alone for permission), and sync runs. Before each run the permitted
addresses are read; every contact the platform receives in that run (sign-up forms, import
rows) must be among them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select, text, update

from stripesync.activity.consent import record_consent, record_unsubscribed
from stripesync.activity.hooks import contacts_changed
from stripesync.clients.constant_contact import ConstantContactClient
from stripesync.db import SessionFactory, transaction
from stripesync.models import PERMITTED_CONSENT, Account, Contact, Segment
from stripesync.sync.service import sync_account
from tests.fakes.constant_contact import FakeConstantContact

STATES = ["pending", "confirmed", "declined", "implied", "unsubscribed", "none"]
PEOPLE = 4

steps = st.lists(
    st.one_of(
        st.tuples(st.just("consent"), st.integers(0, PEOPLE - 1), st.sampled_from(STATES)),
        st.tuples(st.just("platform_unsubscribe"), st.integers(0, PEOPLE - 1)),
        st.tuples(st.just("buy"), st.integers(0, PEOPLE - 1)),
        st.tuples(st.just("stale_membership"), st.integers(0, PEOPLE - 1)),
        st.tuples(st.just("sync")),
    ),
    min_size=1,
    max_size=14,
)
initial = st.lists(
    st.sampled_from(["none", "pending", "implied", "confirmed"]), min_size=PEOPLE, max_size=PEOPLE
)


def _received(fake: FakeConstantContact, since: int) -> set[str]:
    """Addresses of every contact the platform received in pushes after request `since`."""
    got: set[str] = set()
    for request in fake.api_requests()[since:]:
        body = request.body if isinstance(request.body, dict) else {}
        if request.path.endswith("/sign_up_form"):
            got.add(str(body.get("email_address")).lower())
        for row in body.get("import_data") or []:
            got.add(str(row.get("email")).lower())
        assert not request.path.endswith("/add_list_memberships"), "adds only by import"
    return got


async def _permitted(factory: SessionFactory, account_id: str) -> set[str]:
    async with factory() as session:
        rows = await session.scalars(
            select(Contact.email).where(
                Contact.account_id == account_id,
                Contact.consent_state.in_([str(s) for s in PERMITTED_CONSENT]),
            )
        )
        return set(rows)


async def _run(
    factory: SessionFactory,
    example: int,
    start: Sequence[str],
    history: Sequence[tuple[Any, ...]],
) -> None:
    account_id = f"acc_perm_{example}"
    emails = [f"p{i}-{example}@x.io" for i in range(PEOPLE)]
    with FakeConstantContact(
        requests_per_second=10_000, processing_after=0.0, completed_after=0.005
    ) as fake:

        async def token(force_refresh: bool) -> str:
            return "t"

        async with httpx.AsyncClient() as http:
            client = ConstantContactClient(
                http, api_base=fake.url, token=token, backoff_base=0.001, max_attempts=2
            )
            try:
                ids = await _setup(factory, account_id, emails, start)
                for step in [*history, ("sync",)]:
                    await _apply(factory, fake, client, account_id, emails, ids, step)
                # Liveness: with permission → on the platform, on "all"; without → on no
                # list of ours.
                async with factory() as session:
                    all_list = await session.scalar(
                        select(Segment.platform_list_id).where(
                            Segment.account_id == account_id, Segment.key == "all"
                        )
                    )
                permitted = await _permitted(factory, account_id)
                for email in emails:
                    on_platform = fake.contact(email)
                    if email in permitted:
                        assert on_platform is not None and all_list in on_platform.list_ids
                    elif on_platform is not None:
                        assert not on_platform.list_ids & set(fake.lists), email
                assert fake.resubscribe_attempts == []
            finally:
                async with transaction(factory) as session:
                    await session.execute(delete(Account).where(Account.id == account_id))


async def _setup(
    factory: SessionFactory, account_id: str, emails: list[str], start: Sequence[str]
) -> list[int]:
    async with transaction(factory) as session:
        session.add(Account(id=account_id, name="Shop", owner_email="o@shop.io"))
        await session.flush()
        contacts = [
            Contact(
                account_id=account_id,
                email=email,
                email_domain="x.io",
                consent_state=state,
            )
            for email, state in zip(emails, start, strict=True)
        ]
        session.add_all(contacts)
        await session.flush()
        ids = [c.id for c in contacts]
        await contacts_changed(session, account_id, ids)
    return ids


async def _apply(
    factory: SessionFactory,
    fake: FakeConstantContact,
    client: ConstantContactClient,
    account_id: str,
    emails: list[str],
    ids: list[int],
    step: tuple[Any, ...],
) -> None:
    if step[0] == "sync":
        permitted = await _permitted(factory, account_id)
        since = len(fake.api_requests())
        await sync_account(factory, client, account_id, poll_interval=0.005)
        received = _received(fake, since)
        assert received <= permitted, f"pushed without permission: {received - permitted}"
        return
    who = step[1]
    async with transaction(factory) as session:
        if step[0] == "consent":
            if await record_consent(
                session, account_id, ids[who], step[2], source="test", evidence={}
            ):
                await contacts_changed(session, account_id, [ids[who]])
        elif step[0] == "platform_unsubscribe":
            if fake.contact(emails[who]) is not None:
                fake.unsubscribe(emails[who])
            changed = await record_unsubscribed(
                session, account_id, emails[who], source="platform", evidence={}
            )
            if changed is not None:
                await contacts_changed(session, account_id, [changed])
        elif step[0] == "stale_membership":
            await session.execute(
                text(
                    "INSERT INTO contact_segments (contact_id, segment_id)"
                    " SELECT :c, id FROM segments WHERE account_id = :a AND key = 'all'"
                    " ON CONFLICT DO NOTHING"
                ),
                {"c": ids[who], "a": account_id},
            )
            await session.execute(
                update(Contact).where(Contact.id == ids[who]).values(version=Contact.version + 1)
            )
        elif step[0] == "buy":
            await session.execute(
                update(Contact)
                .where(Contact.id == ids[who])
                .values(
                    purchase_count=Contact.purchase_count + 1,
                    version=Contact.version + 1,
                )
            )
            await contacts_changed(session, account_id, [ids[who]])


async def test_the_platform_never_receives_a_contact_without_permission(
    session_factory: SessionFactory,
) -> None:
    loop = asyncio.get_running_loop()
    examples = iter(range(10**6))

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(start=initial, history=steps)
    def check(start: list[str], history: list[tuple[Any, ...]]) -> None:
        future = asyncio.run_coroutine_threadsafe(
            _run(session_factory, next(examples), start, history), loop
        )
        future.result(timeout=120)

    await asyncio.to_thread(check)
