"""Identity: one contact per account and normalised email, whatever the Stripe sources."""

from __future__ import annotations

from stripesync.activity.context import ActivityContext
from stripesync.activity.service import (
    apply_charge,
    apply_checkout_session,
    apply_customer,
    apply_subscription,
    detach_customer,
)
from stripesync.db import SessionFactory
from tests.activity.conftest import (
    apply,
    at,
    charge_obj,
    contact,
    contacts,
    customer_obj,
    customers,
    fixture,
    payments,
)

JENNY = "jenny.rosen@example.com"


async def test_customer_email_is_trimmed_lowercased_and_names_the_contact(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    [only] = await contacts(session_factory)
    assert (only.email, only.email_domain, only.name, only.country) == (
        JENNY,
        "example.com",
        "Jenny Rosen",
        "US",
    )
    assert only.customer_created_at == at(0)


async def test_several_customers_with_one_email_are_one_contact_with_combined_activity(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY, created=10))
    await apply(
        session_factory,
        apply_customer,
        ctx,
        customer_obj("cus_2", " JENNY.rosen@example.COM", created=5),
    )
    await apply(
        session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1", amount=1000)
    )
    await apply(
        session_factory,
        apply_charge,
        ctx,
        charge_obj("ch_2", customer="cus_2", amount=400, created=200),
    )
    [jenny] = await contacts(session_factory)
    assert jenny.purchase_count == 2 and jenny.total_spent == {"usd": 1400}
    assert jenny.customer_created_at == at(5)


async def test_guest_payment_merges_with_a_later_customer_of_the_same_email(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_guest", email=JENNY, amount=700))
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(
        session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1", amount=300)
    )
    [jenny] = await contacts(session_factory)
    assert jenny.purchase_count == 2 and jenny.total_spent == {"usd": 1000}


async def test_email_change_moves_the_customer_activity_to_the_new_address(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_2", JENNY))
    await apply(
        session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1", amount=1000)
    )
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_2", customer="cus_2", amount=50))

    await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_1", "jr@new.example"), observed=60
    )

    moved = await contact(session_factory, "jr@new.example")
    old = await contact(session_factory, JENNY)
    assert moved is not None and moved.purchase_count == 1 and moved.total_spent == {"usd": 1000}
    # The old address keeps only its other source (cus_2).
    assert old is not None and old.purchase_count == 1 and old.total_spent == {"usd": 50}


async def test_contact_without_any_source_left_is_removed(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_1", "jr@new.example"), observed=60
    )
    assert [c.email for c in await contacts(session_factory)] == ["jr@new.example"]


async def test_older_customer_snapshot_arriving_late_changes_nothing(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_1", "jr@new.example"), observed=60
    )
    stale = await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY), observed=0
    )
    assert stale.changed_contact_ids == []
    assert [c.email for c in await contacts(session_factory)] == ["jr@new.example"]


async def test_customers_without_usable_email_are_kept_with_a_countable_reason(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    no_email = await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", None))
    invalid = await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_2", "not-an-email")
    )
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1"))

    assert (no_email.skipped_reason, invalid.skipped_reason) == ("no_email", "invalid_email")
    stored = await customers(session_factory)
    assert [(c.stripe_id, c.email, c.email_problem) for c in stored] == [
        ("cus_1", None, "no_email"),
        ("cus_2", None, "invalid_email"),
    ]
    assert await contacts(session_factory) == []
    assert len(await payments(session_factory)) == 1


async def test_deleted_customer_no_longer_counts_but_its_contact_keeps_other_sources(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_2", JENNY))
    await apply(
        session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1", amount=1000)
    )
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_2", customer="cus_2", amount=50))

    await apply(session_factory, detach_customer, ctx, customer_obj("cus_1", JENNY), observed=90)

    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1 and jenny.total_spent == {"usd": 50}
    # A deletion is final: a late `customer.updated` does not bring the customer back.
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY), observed=95)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.purchase_count == 1


async def test_deleting_the_only_customer_removes_an_implied_contact(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_1", customer="cus_1"))
    await apply(session_factory, detach_customer, ctx, customer_obj("cus_1", JENNY), observed=90)
    assert await contacts(session_factory) == []
    [payment] = await payments(session_factory)
    assert payment.contact_id is None


async def test_subscription_status_is_the_best_of_the_contacts_subscriptions(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_1", JENNY))
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_2", JENNY))
    canceled = fixture("subscription", id="sub_1", customer="cus_1", status="canceled")
    await apply(session_factory, apply_subscription, ctx, canceled)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.subscription_status == "canceled"

    trialing = fixture("subscription", id="sub_2", customer="cus_2", status="trialing")
    await apply(session_factory, apply_subscription, ctx, trialing)
    active = fixture("subscription", id="sub_2", customer="cus_2", status="active")
    await apply(session_factory, apply_subscription, ctx, active, observed=10)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.subscription_status == "active"

    await apply(session_factory, apply_subscription, ctx, active, observed=20, deleted=True)
    # A stale update after the deletion does not revive it.
    await apply(session_factory, apply_subscription, ctx, active, observed=15)
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.subscription_status == "canceled"


async def test_guest_checkout_makes_a_contact_from_the_typed_email(
    session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    applied = await apply(session_factory, apply_checkout_session, ctx, fixture("checkout_session"))
    guest = await contact(session_factory, "guest.buyer@example.com")
    assert guest is not None and applied.changed_contact_ids == [guest.id]
