"""Apply Stripe objects to the local picture of customers, payments and contacts.

Each function takes a Stripe object (a dict, as a webhook or a list endpoint returns it) and
the account context, so webhooks and the historical import share one path. Each is
idempotent and order-independent (rules: repository.py), and ends by notifying the contact
hooks (`contacts_changed`) in the caller's transaction.

A page of objects (the historical import) runs inside `deferred_finish`: each apply still
writes its rows and re-derives its links, but the last step (drop sourceless contacts,
recompute activity, notify the hooks: `linking.finish`) runs ONCE for the union of the
contacts the page touched, instead of once per object. Same rules, same code; only fewer
times. Webhooks apply one object per event and keep finishing immediately.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import consent, linking, repository
from stripesync.activity.context import ActivityContext
from stripesync.activity.identity import SUPPRESSED
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
    """What one apply did: the contacts that changed, and why no contact was made when the
    object had no usable email (`no_email`, `invalid_email`, `suppressed`: import report)."""

    changed_contact_ids: list[int] = field(default_factory=list)
    skipped_reason: str | None = None


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
async def deferred_finish(session: AsyncSession, ctx: ActivityContext) -> AsyncIterator[PageFinish]:
    """Apply many objects of one account with one `linking.finish` (one activity refresh,
    one `contacts_changed` call) at the end. Inside, the apply functions answer
    `Applied.changed_contact_ids == []`: the page's changed contacts are on the yielded
    object after exit. Nothing is finished when the block raises (the transaction is
    rolled back by its owner anyway)."""
    if _PAGE.get() is not None:
        raise RuntimeError("deferred_finish blocks do not nest")
    page = PageFinish(session, ctx)
    token = _PAGE.set(page)
    try:
        yield page
    finally:
        _PAGE.reset(token)
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


async def _is_suppressed(session: AsyncSession, ctx: ActivityContext, email: str | None) -> bool:
    if email is None:
        return False
    return bool(await linking.suppressed_emails(session, ctx.account_id, [email]))


async def apply_customer(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject, *, deleted: bool = False
) -> Applied:
    """customer.created / customer.updated (and list results); `deleted` for tombstones."""
    snap = customer_snapshot(obj, deleted=deleted)
    if await _is_suppressed(session, ctx, snap.email):
        snap = replace(snap, email=None, email_problem=SUPPRESSED)
    await repository.upsert_customer(session, ctx, snap)
    changes = linking.Changes()
    await linking.relink_customer(session, ctx, snap.stripe_id, changes)
    changed = await _finish(session, ctx, changes)
    return Applied(changed, None if snap.deleted else snap.email_problem)


async def detach_customer(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    """customer.deleted: the customer and its payments no longer count for anyone; its
    contact stays while other sources remain."""
    return await apply_customer(session, ctx, obj, deleted=True)


async def _apply_payment(
    session: AsyncSession, ctx: ActivityContext, snap: PaymentSnapshot | None
) -> Applied:
    if snap is None:
        return Applied()
    if await _is_suppressed(session, ctx, snap.guest_email):
        snap = replace(snap, guest_email=None)
    await repository.upsert_payment(session, ctx, snap)
    changes = linking.Changes()
    await linking.relink_payments(session, ctx, changes, charge_id=snap.charge_id)
    return Applied(await _finish(session, ctx, changes))


async def apply_charge(session: AsyncSession, ctx: ActivityContext, obj: StripeObject) -> Applied:
    """charge.succeeded / failed / refunded / updated: the canonical payment."""
    return await _apply_payment(session, ctx, charge_snapshot(obj, ctx.observed_at))


async def apply_payment_intent(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    """payment_intent.succeeded / payment_failed: counted under its `latest_charge`."""
    return await _apply_payment(session, ctx, payment_intent_snapshot(obj))


async def apply_invoice(session: AsyncSession, ctx: ActivityContext, obj: StripeObject) -> Applied:
    """invoice.paid / payment_succeeded / payment_failed: counted under `invoice.charge`."""
    return await _apply_payment(session, ctx, invoice_snapshot(obj))


async def apply_subscription(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject, *, deleted: bool = False
) -> Applied:
    snap = subscription_snapshot(obj, deleted=deleted)
    if not snap.customer_id:
        return Applied()
    await repository.upsert_subscription(session, ctx, snap)
    changes = linking.Changes()
    changes.touch(await repository.contact_of_customer(session, ctx, snap.customer_id))
    return Applied(await _finish(session, ctx, changes))


async def apply_checkout_session(
    session: AsyncSession, ctx: ActivityContext, obj: StripeObject
) -> Applied:
    """checkout.session.completed: the buyer (a guest when `customer` is null) and, when
    they ticked the promotions box, their own explicit consent."""
    snap = checkout_snapshot(obj)
    if await _is_suppressed(session, ctx, snap.email):
        snap = replace(snap, email=None, email_problem=SUPPRESSED)
    await repository.upsert_checkout(session, ctx, snap)
    changes = linking.Changes()
    contact_id = await linking.relink_checkout(session, ctx, snap.stripe_id, changes)
    stored = await repository.checkout_link(session, ctx, snap.stripe_id)
    if contact_id is not None and stored is not None and stored[2] == "opt_in":
        confirmed = await consent.record_consent(
            session,
            ctx.account_id,
            contact_id,
            ConsentState.CONFIRMED,
            source="stripe_checkout",
            evidence={
                "checkout_session": snap.stripe_id,
                "consent.promotions": "opt_in",
                "livemode": ctx.livemode,
                "session_created": snap.created.isoformat() if snap.created else None,
            },
        )
        if confirmed:
            changes.changed.add(contact_id)
    return Applied(await _finish(session, ctx, changes), snap.email_problem)
