"""Apply Stripe objects to the local picture of customers, payments and contacts.

Each function takes a Stripe object (a dict, as a webhook or a list endpoint returns it) and
the account context, so webhooks and the historical import share one path. Each is
idempotent and order-independent (rules: repository.py), and ends by notifying the contact
hooks (`contacts_changed`) in the caller's transaction.

A page of objects runs inside `deferred_finish`: each apply still writes its rows and
re-derives its links, but the last step (drop sourceless contacts, recompute activity,
notify the hooks: `linking.finish`) runs ONCE for the union of the contacts the page
touched, instead of once per object. The historical import goes further
(`collected_changes`): it records the touched contacts with each page and finishes them in
bulk once its lists are read, each contact once however many pages touched it. Same rules,
same code; only fewer times. Webhooks apply one object per event and finish immediately.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import consent, linking, repository
from stripesync.activity.context import ActivityContext
from stripesync.activity.identity import NO_EMAIL, SUPPRESSED
from stripesync.activity.objects import (
    PaymentSnapshot,
    StripeObject,
    charge_snapshot,
    checkout_snapshot,
    customer_snapshot,
    invoice_snapshot,
    payment_intent_snapshot,
    subscription_snapshot,
)
from stripesync.models import ConsentState


@dataclass(frozen=True)
class Applied:
    """What one apply did: the contacts that changed, the person's normalised address as the
    object gave it, and why no contact was made when it had none usable (`no_email`,
    `invalid_email`, `suppressed`; a guest payment without an address: `no_email`)."""

    changed_contact_ids: list[int] = field(default_factory=list)
    skipped_reason: str | None = None
    email: str | None = None


@dataclass
class PageFinish:
    """The contacts a page touched, finished together when `deferred_finish` exits;
    `changed_contact_ids` is filled then (what the hooks were told)."""

    session: AsyncSession
    ctx: ActivityContext
    changes: linking.Changes = field(default_factory=linking.Changes)
    changed_contact_ids: list[int] = field(default_factory=list)


_PAGE: ContextVar[PageFinish | None] = ContextVar("activity_page_finish", default=None)


def _key(ctx: ActivityContext) -> tuple[str, bool]:
    return ctx.account_id, ctx.livemode


@asynccontextmanager
async def collected_changes(
    session: AsyncSession, ctx: ActivityContext
) -> AsyncIterator[PageFinish]:
    """Apply many objects of one account and finish none of them: the contacts they touched
    gather on the yielded object (`changes`) for the caller's `linking.finish`, in this
    transaction or, for an import that finishes its contacts in bulk, a later one. Inside,
    the apply functions answer `Applied.changed_contact_ids == []`."""
    if _PAGE.get() is not None:
        raise RuntimeError("collected_changes and deferred_finish blocks do not nest")
    page = PageFinish(session, ctx)
    token = _PAGE.set(page)
    try:
        yield page
    finally:
        _PAGE.reset(token)


@asynccontextmanager
async def deferred_finish(session: AsyncSession, ctx: ActivityContext) -> AsyncIterator[PageFinish]:
    """Apply many objects of one account with one `linking.finish` (one activity refresh,
    one `contacts_changed` call) at the end: the page's changed contacts are on the yielded
    object after exit. Nothing is finished when the block raises (the transaction is
    rolled back by its owner anyway)."""
    async with collected_changes(session, ctx) as page:
        yield page
    page.changed_contact_ids = await linking.finish(session, ctx, page.changes)


async def _finish(
    session: AsyncSession, ctx: ActivityContext, changes: linking.Changes
) -> list[int]:
    page = _PAGE.get()
    if page is None or page.session is not session or _key(page.ctx) != _key(ctx):
        return await linking.finish(session, ctx, changes)
    page.changes.touched |= changes.touched
    page.changes.changed |= changes.changed
    return []


async def _suppressed(
    session: AsyncSession, ctx: ActivityContext, emails: Iterable[str | None]
) -> set[str]:
    wanted = {e for e in emails if e is not None}
    return await linking.suppressed_emails(session, ctx.account_id, wanted) if wanted else set()


# Each apply function takes a batch of objects of one kind (a webhook: a batch of one; an
# import: a page) and answers one `Applied` per object, in order. A batch costs a fixed
# number of statements, whatever its size: every step below is set-based.


async def apply_customers(
    session: AsyncSession,
    ctx: ActivityContext,
    objs: Sequence[StripeObject],
    *,
    deleted: bool = False,
) -> list[Applied]:
    """customer.created / updated / deleted (and list results); `deleted` for tombstones."""
    given = snaps = [customer_snapshot(obj, deleted=deleted) for obj in objs]
    suppressed = await _suppressed(session, ctx, (snap.email for snap in snaps))
    snaps = [
        replace(snap, email=None, email_problem=SUPPRESSED) if snap.email in suppressed else snap
        for snap in snaps
    ]
    await repository.upsert_customers(session, ctx, snaps)
    changes = linking.Changes()
    await linking.relink_customers(session, ctx, {snap.stripe_id for snap in snaps}, changes)
    changed = await _finish(session, ctx, changes)
    return [
        Applied(changed, None if snap.deleted else snap.email_problem, raw.email)
        for snap, raw in zip(snaps, given, strict=True)
    ]


async def apply_customer(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject, *, deleted: bool = False
) -> Applied:
    return (await apply_customers(session, ctx, [obj], deleted=deleted))[0]


async def detach_customer(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    """customer.deleted: the customer and its payments no longer count for anyone; its
    contact stays while other sources remain."""
    return await apply_customer(session, ctx, obj, deleted=True)


async def _apply_payments(
    session: AsyncSession, ctx: ActivityContext, found: Sequence[PaymentSnapshot | None]
) -> list[Applied]:
    snaps = [snap for snap in found if snap is not None]
    if not snaps:
        return [Applied() for _ in found]
    suppressed = await _suppressed(session, ctx, (snap.guest_email for snap in snaps))
    snaps = [
        replace(snap, guest_email=None) if snap.guest_email in suppressed else snap
        for snap in snaps
    ]
    await repository.upsert_payments(session, ctx, snaps)
    changes = linking.Changes()
    await linking.relink_payments(
        session, ctx, changes, charge_ids={snap.charge_id for snap in snaps}
    )
    changed = await _finish(session, ctx, changes)
    return [
        Applied()
        if snap is None
        else Applied(
            changed, NO_EMAIL if snap.customer_id is None and snap.guest_email is None else None
        )
        for snap in found
    ]


async def apply_charges(
    session: AsyncSession, ctx: ActivityContext, objs: Sequence[StripeObject]
) -> list[Applied]:
    """charge.succeeded / failed / refunded / updated: the canonical payment."""
    return await _apply_payments(session, ctx, [charge_snapshot(o, ctx.observed_at) for o in objs])


async def apply_charge(session: AsyncSession, ctx: ActivityContext, obj: StripeObject) -> Applied:
    return (await apply_charges(session, ctx, [obj]))[0]


async def apply_payment_intent(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    """payment_intent.succeeded / payment_failed: counted under its `latest_charge`."""
    return (await _apply_payments(session, ctx, [payment_intent_snapshot(obj)]))[0]


async def apply_invoice(session: AsyncSession, ctx: ActivityContext, obj: StripeObject) -> Applied:
    """invoice.paid / payment_succeeded / payment_failed: counted under `invoice.charge`."""
    return (await _apply_payments(session, ctx, [invoice_snapshot(obj)]))[0]


async def apply_subscriptions(
    session: AsyncSession,
    ctx: ActivityContext,
    objs: Sequence[StripeObject],
    *,
    deleted: bool = False,
) -> list[Applied]:
    snaps = [subscription_snapshot(obj, deleted=deleted) for obj in objs]
    kept = [snap for snap in snaps if snap.customer_id]
    if not kept:
        return [Applied() for _ in snaps]
    await repository.upsert_subscriptions(session, ctx, kept)
    changes = linking.Changes()
    changes.touch(
        *await repository.contacts_of_customers(session, ctx, {s.customer_id for s in kept})
    )
    changed = await _finish(session, ctx, changes)
    return [Applied(changed) if snap.customer_id else Applied() for snap in snaps]


async def apply_subscription(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject, *, deleted: bool = False
) -> Applied:
    return (await apply_subscriptions(session, ctx, [obj], deleted=deleted))[0]


async def apply_checkout_sessions(
    session: AsyncSession, ctx: ActivityContext, objs: Sequence[StripeObject]
) -> list[Applied]:
    """checkout.session.completed: the buyer (a guest when `customer` is null) and, when
    they ticked the promotions box, their own explicit consent."""
    given = snaps = [checkout_snapshot(obj) for obj in objs]
    suppressed = await _suppressed(session, ctx, (snap.email for snap in snaps))
    snaps = [
        replace(snap, email=None, email_problem=SUPPRESSED) if snap.email in suppressed else snap
        for snap in snaps
    ]
    await repository.upsert_checkouts(session, ctx, snaps)
    changes = linking.Changes()
    linked = await linking.relink_checkouts(session, ctx, {s.stripe_id for s in snaps}, changes)
    created = {snap.stripe_id: snap.created for snap in snaps}
    for stripe_id, (contact_id, promotions) in sorted(linked.items()):
        if contact_id is None or promotions != "opt_in":
            continue
        at = created.get(stripe_id)
        confirmed = await consent.record_consent(
            session,
            ctx.account_id,
            contact_id,
            ConsentState.CONFIRMED,
            source="stripe_checkout",
            evidence={
                "checkout_session": stripe_id,
                "consent.promotions": "opt_in",
                "livemode": ctx.livemode,
                "session_created": at.isoformat() if at else None,
            },
        )
        if confirmed:
            changes.changed.add(contact_id)
    changed = await _finish(session, ctx, changes)
    return [
        Applied(changed, snap.email_problem, raw.email)
        for snap, raw in zip(snaps, given, strict=True)
    ]


async def apply_checkout_session(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    return (await apply_checkout_sessions(session, ctx, [obj]))[0]
