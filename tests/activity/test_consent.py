"""Consent states and the append-only consent ledger."""

from __future__ import annotations

from sqlalchemy import select

from stripesync.activity.consent import record_consent
from stripesync.activity.context import ActivityContext
from stripesync.activity.identity import email_hash
from stripesync.activity.service import apply_checkout_session, apply_customer
from stripesync.db import SessionFactory, transaction
from stripesync.models import ConsentEvent
from tests.activity.conftest import apply, connect_account, contact, customer_obj, fixture

JENNY = "jenny.rosen@example.com"
GUEST = "guest.buyer@example.com"


async def ledger(factory: SessionFactory) -> list[ConsentEvent]:
    async with factory() as session:
        return list(await session.scalars(select(ConsentEvent).order_by(ConsentEvent.id)))


async def test_direct_mode_gives_new_contacts_implied_consent_on_the_merchants_affirmation(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.consent_state == "implied"
    [entry] = await ledger(session_factory)
    assert (entry.contact_id, entry.state, entry.email_hash) == (
        jenny.id,
        "implied",
        email_hash(JENNY),
    )
    assert entry.evidence["connection_id"] == ctx.connection_id
    assert JENNY not in str(entry.evidence)


async def test_optin_mode_leaves_new_contacts_without_consent(
    session_factory: SessionFactory,
) -> None:
    ctx = await connect_account(session_factory, mode="optin")
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.consent_state == "none"
    assert await ledger(session_factory) == []


async def test_checkout_promotions_opt_in_is_the_buyers_own_confirmed_consent(
    session_factory: SessionFactory,
) -> None:
    ctx = await connect_account(session_factory, mode="optin")
    await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    guest = await contact(session_factory, GUEST)
    assert guest is not None and guest.consent_state == "confirmed"
    [entry] = await ledger(session_factory)
    assert entry.source == "stripe_checkout" and entry.state == "confirmed"
    assert entry.evidence["checkout_session"] == "cs_test_a1Zq3bP0hX9wYVd7cLr2TmK8nE4"
    # Delivered again: nothing new in the ledger, no version bump.
    again = await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    assert again.changed_contact_ids == [] and len(await ledger(session_factory)) == 1


async def test_checkout_without_opt_in_gives_no_consent(session_factory: SessionFactory) -> None:
    ctx = await connect_account(session_factory, mode="optin")
    opted_out = fixture(
        "checkout_session", consent={"promotions": "opt_out", "terms_of_service": None}
    )
    await apply(session_factory, apply_checkout_session, ctx, opted_out)
    guest = await contact(session_factory, GUEST)
    assert guest is not None and guest.consent_state == "none"


async def test_checkout_opt_in_upgrades_implied_consent_to_confirmed(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    guest = await contact(session_factory, GUEST)
    assert guest is not None and guest.consent_state == "confirmed"
    assert [e.state for e in await ledger(session_factory)] == ["implied", "confirmed"]


async def test_unsubscribed_and_declined_are_final(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", GUEST))
    guest = await contact(session_factory, GUEST)
    assert guest is not None
    async with transaction(session_factory) as session:
        assert await record_consent(
            session, ctx.account_id, guest.id, "unsubscribed", source="test", evidence={}
        )
    await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    async with transaction(session_factory) as session:
        for state in ("confirmed", "implied", "pending", "none", "declined"):
            assert not await record_consent(
                session, ctx.account_id, guest.id, state, source="test", evidence={}
            )
    guest = await contact(session_factory, GUEST)
    assert guest is not None and guest.consent_state == "unsubscribed"


async def test_consent_change_bumps_the_contact_version(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", GUEST))
    before = await contact(session_factory, GUEST)
    assert before is not None
    await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    after = await contact(session_factory, GUEST)
    assert after is not None and after.version > before.version


async def test_recreated_contact_inherits_the_persons_last_word_from_the_ledger(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    """An unsubscribed contact whose only customer was deleted, when the address comes back."""
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None
    async with transaction(session_factory) as session:
        await record_consent(
            session, ctx.account_id, jenny.id, "declined", source="test", evidence={}
        )
    # Not disposable: the person's own word keeps the contact even without a source.
    await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_1", "jr@new.example"), observed=5
    )
    kept = await contact(session_factory, JENNY)
    assert kept is not None and kept.consent_state == "declined"
