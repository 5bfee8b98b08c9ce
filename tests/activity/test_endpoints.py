"""Platform API: a contact by email, unsubscribes the platform reports, erasure."""

from __future__ import annotations

import httpx
from sqlalchemy import func, select

from stripesync.activity.context import ActivityContext
from stripesync.activity.identity import email_hash
from stripesync.activity.service import apply_charge, apply_checkout_session, apply_customer
from stripesync.db import SessionFactory
from stripesync.models import (
    CheckoutSession,
    ConsentEvent,
    Contact,
    Payment,
    StripeCustomer,
    Suppression,
)
from tests.activity.conftest import (
    apply,
    charge_obj,
    connect_account,
    contact,
    contacts,
    customer_obj,
    fixture,
)
from tests.conftest import platform_headers

JENNY = "jenny.rosen@example.com"
URL = "/v1/accounts/acc_1/contacts"


async def count(factory: SessionFactory, model: type) -> int:
    async with factory() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def test_get_contact_shows_consent_evidence_customer_ids_and_activity(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    await apply(session_factory, apply_customer, ctx, customer_obj("cus_2", JENNY))
    await apply(session_factory, apply_charge, ctx, fixture("charge"))

    answer = await app_client.get(
        URL, params={"email": " Jenny.Rosen@example.com"}, headers=platform_headers
    )

    assert answer.status_code == 200
    body = answer.json()
    assert body["email"] == JENNY
    assert body["stripe_customer_ids"] == ["cus_2", "cus_QEbV9Xk3ZsFpTq"]
    assert body["consent"]["state"] == "implied"
    [evidence] = body["consent"]["evidence"]
    assert (
        evidence["state"] == "implied"
        and evidence["evidence"]["connection_id"] == ctx.connection_id
    )
    assert body["activity"]["purchase_count"] == 1
    assert body["activity"]["total_spent"] == [{"amount": 2500, "currency": "usd"}]
    assert body["segments"] == []
    assert body["sync"]["state"] == "pending"  # never pushed yet


async def test_get_contact_answers_404_for_unknown_email_and_422_for_invalid_one(
    app_client: httpx.AsyncClient, ctx: ActivityContext
) -> None:
    missing = await app_client.get(
        URL, params={"email": "nobody@example.com"}, headers=platform_headers
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "contact_not_found"
    invalid = await app_client.get(URL, params={"email": "nope"}, headers=platform_headers)
    assert invalid.status_code == 422
    assert invalid.json()["error"]["details"]["fields"][0]["field"] == "query.email"
    absent = await app_client.get(URL, headers=platform_headers)
    assert absent.status_code == 422


async def test_contacts_endpoints_need_the_platform_token_and_a_known_account(
    app_client: httpx.AsyncClient, ctx: ActivityContext
) -> None:
    assert (await app_client.get(URL, params={"email": JENNY})).status_code == 401
    unknown = await app_client.get(
        "/v1/accounts/acc_other/contacts", params={"email": JENNY}, headers=platform_headers
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "account_not_found"


async def test_another_accounts_contact_is_not_reachable(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    other = await connect_account(session_factory, account_id="acc_2", stripe_account="acct_2")
    await apply(session_factory, apply_customer, other, fixture("customer"))
    answer = await app_client.get(URL, params={"email": JENNY}, headers=platform_headers)
    assert answer.status_code == 404
    erased = await app_client.delete(URL, params={"email": JENNY}, headers=platform_headers)
    assert erased.status_code == 204
    assert await contact(session_factory, JENNY, account_id="acc_2") is not None


async def test_unsubscribed_report_is_final_bumps_version_and_is_ledgered(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    before = await contact(session_factory, JENNY)
    assert before is not None

    answer = await app_client.post(
        f"{URL}/unsubscribed", json={"email": "JENNY.rosen@example.com"}, headers=platform_headers
    )

    assert answer.status_code == 204
    after = await contact(session_factory, JENNY)
    assert after is not None and after.consent_state == "unsubscribed"
    assert after.version > before.version
    # Repeating it changes nothing; a later checkout opt-in cannot re-subscribe them.
    await app_client.post(f"{URL}/unsubscribed", json={"email": JENNY}, headers=platform_headers)
    opt_in = fixture("checkout_session")
    opt_in["customer_details"] = {**opt_in["customer_details"], "email": JENNY}
    await apply(session_factory, apply_checkout_session, ctx, opt_in)
    final = await contact(session_factory, JENNY)
    assert final is not None and final.consent_state == "unsubscribed"
    assert final.version == after.version
    async with session_factory() as session:
        states = list(await session.scalars(select(ConsentEvent.state).order_by(ConsentEvent.id)))
    assert states == ["implied", "unsubscribed"]


async def test_unsubscribed_before_the_contact_exists_makes_it_start_unsubscribed(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    answer = await app_client.post(
        f"{URL}/unsubscribed", json={"email": JENNY}, headers=platform_headers
    )
    assert answer.status_code == 204
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    jenny = await contact(session_factory, JENNY)
    assert jenny is not None and jenny.consent_state == "unsubscribed"


async def test_unsubscribe_rejects_an_invalid_email(
    app_client: httpx.AsyncClient, ctx: ActivityContext
) -> None:
    answer = await app_client.post(
        f"{URL}/unsubscribed", json={"email": "x"}, headers=platform_headers
    )
    assert answer.status_code == 422
    assert answer.json()["error"]["details"]["fields"][0]["field"] == "body.email"


async def test_erasure_removes_the_persons_data_and_keeps_only_a_hashed_suppression(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, ctx: ActivityContext
) -> None:
    await apply(session_factory, apply_customer, ctx, fixture("customer"))
    await apply(session_factory, apply_charge, ctx, fixture("charge"))
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_guest", email=JENNY))
    checkout = fixture("checkout_session")
    checkout["customer_details"] = {**checkout["customer_details"], "email": JENNY}
    await apply(session_factory, apply_checkout_session, ctx, checkout)
    # Someone else, untouched by the erasure.
    await apply(
        session_factory, apply_customer, ctx, customer_obj("cus_other", "other@example.com")
    )

    answer = await app_client.delete(URL, params={"email": JENNY}, headers=platform_headers)

    assert answer.status_code == 204
    assert [c.email for c in await contacts(session_factory)] == ["other@example.com"]
    assert await count(session_factory, Payment) == 0
    assert await count(session_factory, CheckoutSession) == 0
    async with session_factory() as session:
        assert list(await session.scalars(select(StripeCustomer.stripe_id))) == ["cus_other"]
        ledger_hashes = set(await session.scalars(select(ConsentEvent.email_hash)))
        suppressions = list(await session.scalars(select(Suppression)))
    assert email_hash(JENNY) not in ledger_hashes
    assert [(s.account_id, s.email_hash) for s in suppressions] == [("acc_1", email_hash(JENNY))]

    # Stripe keeps sending events about them: nothing recreates the contact or the address.
    again = await apply(session_factory, apply_customer, ctx, fixture("customer"), observed=500)
    await apply(session_factory, apply_charge, ctx, charge_obj("ch_guest_2", email=JENNY))
    assert again.skipped_reason == "suppressed"
    assert await contact(session_factory, JENNY) is None
    async with session_factory() as session:
        stored_emails = set(await session.scalars(select(StripeCustomer.email)))
        guest_emails = set(await session.scalars(select(Payment.guest_email)))
    assert JENNY not in stored_emails | guest_emails

    repeated = await app_client.delete(URL, params={"email": JENNY}, headers=platform_headers)
    assert repeated.status_code == 204
    assert await count(session_factory, Suppression) == 1
    assert await count(session_factory, Contact) == 1
