"""The platform's view of one contact, unsubscribes it reports, and erasure."""

from __future__ import annotations

from sqlalchemy import delete, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import consent
from stripesync.activity.hooks import contacts_changed
from stripesync.activity.identity import check_email, email_hash
from stripesync.activity.schemas import (
    ConsentRecord,
    ConsentView,
    ContactView,
    Money,
    PaymentSummary,
    SyncState,
)
from stripesync.kit.errors import ApiError
from stripesync.models import (
    CheckoutSession,
    ConsentEvent,
    Contact,
    Payment,
    StripeCustomer,
    Subscription,
    Suppression,
)


def valid_email(raw: str, field: str) -> str:
    """The normalised address, or 422 naming the field."""
    check = check_email(raw)
    if check.email is None:
        raise ApiError(
            422,
            "validation_error",
            f"Invalid {field}",
            {"fields": [{"field": field, "message": "not a valid email address"}]},
        )
    return check.email


async def contact_view(session: AsyncSession, account_id: str, email: str) -> ContactView:
    contact = await session.scalar(
        select(Contact).where(Contact.account_id == account_id, Contact.email == email)
    )
    if contact is None:
        raise ApiError(404, "contact_not_found", "No contact with that email.")
    ledger = await session.scalars(
        select(ConsentEvent)
        .where(
            ConsentEvent.account_id == account_id,
            or_(
                ConsentEvent.contact_id == contact.id, ConsentEvent.email_hash == email_hash(email)
            ),
        )
        .order_by(ConsentEvent.id)
    )
    customer_ids = await session.scalars(
        select(StripeCustomer.stripe_id)
        .where(
            StripeCustomer.account_id == account_id,
            StripeCustomer.contact_id == contact.id,
            StripeCustomer.deleted.is_(False),
        )
        .order_by(StripeCustomer.stripe_id)
    )
    return ContactView(
        email=contact.email,
        name=contact.name,
        email_domain=contact.email_domain,
        country=contact.country,
        consent=ConsentView(
            state=contact.consent_state,
            evidence=[
                ConsentRecord(
                    state=e.state, source=e.source, evidence=e.evidence, created_at=e.created_at
                )
                for e in ledger
            ],
        ),
        stripe_customer_ids=list(customer_ids),
        activity=PaymentSummary(
            purchase_count=contact.purchase_count,
            total_spent=[
                Money(amount=int(v), currency=k) for k, v in sorted(contact.total_spent.items())
            ],
            first_purchase_at=contact.first_purchase_at,
            last_purchase_at=contact.last_purchase_at,
            last_failed_at=contact.last_failed_at,
            has_failed_since_last_purchase=contact.has_failed_since_last_purchase,
            refund_count=contact.refund_count,
            last_refund_at=contact.last_refund_at,
            customer_created_at=contact.customer_created_at,
            subscription_status=contact.subscription_status,
        ),
        segments=[],
        sync=SyncState(
            state=contact.sync_state,
            version=contact.version,
            synced_version=contact.synced_version,
            on_platform=bool(contact.platform_contact_id or contact.synced_lists),
            lists=list(contact.synced_lists),
            platform_contact_id=contact.platform_contact_id,
            synced_at=contact.synced_at,
            error=contact.sync_error,
            deferred_until=contact.sync_deferred_until,
        ),
        created_at=contact.created_at,
        updated_at=contact.updated_at,
    )


async def unsubscribe(session: AsyncSession, account_id: str, email: str) -> None:
    changed = await consent.record_unsubscribed(
        session,
        account_id,
        email,
        source="platform",
        evidence={"reported_by": "platform_api"},
    )
    if changed is not None:
        await contacts_changed(session, account_id, [changed])


async def erase(session: AsyncSession, account_id: str, email: str) -> None:
    """Remove the person's customers, payments, checkouts, consent records and contact;
    keep only the hash of the address, which stops any of it being created again."""
    digest = email_hash(email)
    contact_id = await session.scalar(
        select(Contact.id).where(Contact.account_id == account_id, Contact.email == email)
    )
    customer_filter = or_(StripeCustomer.email == email, StripeCustomer.contact_id == contact_id)
    customers = (
        await session.execute(
            select(StripeCustomer.livemode, StripeCustomer.stripe_id).where(
                StripeCustomer.account_id == account_id, customer_filter
            )
        )
    ).all()
    keys = [tuple(row) for row in customers]
    if keys:
        await session.execute(
            delete(Subscription).where(
                Subscription.account_id == account_id,
                tuple_(Subscription.livemode, Subscription.customer_id).in_(keys),
            )
        )
    owned = [Payment.contact_id == contact_id]
    if keys:
        owned.append(tuple_(Payment.livemode, Payment.customer_id).in_(keys))
    await session.execute(delete(Payment).where(Payment.account_id == account_id, or_(*owned)))
    # Someone else's payment that carried this address as its billing email keeps counting
    # for them, without the address.
    await session.execute(
        update(Payment)
        .where(Payment.account_id == account_id, Payment.guest_email == email)
        .values(guest_email=None, guest_email_at=None)
    )
    await session.execute(
        delete(CheckoutSession).where(
            CheckoutSession.account_id == account_id,
            or_(CheckoutSession.email == email, CheckoutSession.contact_id == contact_id),
        )
    )
    await session.execute(
        delete(StripeCustomer).where(StripeCustomer.account_id == account_id, customer_filter)
    )
    await session.execute(
        delete(ConsentEvent).where(
            ConsentEvent.account_id == account_id,
            or_(ConsentEvent.email_hash == digest, ConsentEvent.contact_id == contact_id),
        )
    )
    if contact_id is not None:
        await session.execute(
            delete(Contact).where(Contact.account_id == account_id, Contact.id == contact_id)
        )
    await session.execute(
        insert(Suppression)
        .values(account_id=account_id, email_hash=digest, reason="erased")
        .on_conflict_do_nothing(constraint="uq_suppressions_key")
    )
