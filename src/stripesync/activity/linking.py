"""Identity: which contact each Stripe row belongs to, derived from stored rows only.

- A customer belongs to the contact of its email (none when deleted, without a usable
  email, or suppressed). Several customers with one email share one contact.
- A payment belongs to its customer's contact; to nobody when that customer was deleted;
  otherwise (a guest payment, a customer not stored yet or one without a usable email) to
  the contact of its own email. So a guest payment merges into a customer with that email.
- A checkout session belongs to the contact of the email the buyer typed.
- A contact left without any source disappears unless the person said something about
  consent themselves (see repository.DISPOSABLE_CONSENT).

Every apply function re-derives the links it may have affected and then calls `finish`,
which recomputes the touched contacts and notifies the hooks.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import consent, repository
from stripesync.activity.context import ActivityContext
from stripesync.activity.hooks import contacts_changed
from stripesync.activity.identity import email_domain, email_hash
from stripesync.models import ConsentState


@dataclass
class Changes:
    touched: set[int] = field(default_factory=set)  # contacts that may need recomputing
    changed: set[int] = field(default_factory=set)  # contacts created or whose consent moved

    def touch(self, *ids: int | None) -> None:
        self.touched.update(i for i in ids if i is not None)


async def suppressed_emails(
    session: AsyncSession, account_id: str, emails: Collection[str]
) -> set[str]:
    by_hash = {email_hash(e): e for e in emails}
    hashes = await repository.suppressed_hashes(session, account_id, list(by_hash))
    return {by_hash[h] for h in hashes}


async def ensure_contacts(
    session: AsyncSession, ctx: ActivityContext, emails: Collection[str], changes: Changes
) -> dict[str, int]:
    """The contact id of each address, creating missing contacts (never for a suppressed
    address). A new contact's consent: what the ledger last recorded for the address, else
    `implied` in direct mode (ledgered with the merchant's affirmation) or `none`."""
    wanted = set(emails) - await suppressed_emails(session, ctx.account_id, emails)
    if not wanted:
        return {}
    found = await repository.contact_ids_by_email(session, ctx.account_id, wanted)
    missing = sorted(wanted - found.keys())
    if missing:
        ledger = await consent.latest_ledger_states(session, ctx.account_id, missing)
        states = {e: consent.initial_consent(ctx, ledger.get(e)) for e in missing}
        created = await repository.insert_contacts(
            session, ctx.account_id, [(e, email_domain(e), states[e]) for e in missing]
        )
        implied = []
        for email, contact_id in created.items():
            changes.changed.add(contact_id)
            changes.touched.add(contact_id)
            if states[email] == ConsentState.IMPLIED and ledger.get(email) != ConsentState.IMPLIED:
                implied.append((contact_id, email))
        await consent.append_ledger_entries(
            session,
            ctx.account_id,
            implied,
            state=ConsentState.IMPLIED,
            source="stripe_direct_import",
            evidence=consent.direct_mode_evidence(ctx),
        )
        found.update(created)
        # Another transaction may have created some between our look-up and insert.
        late = set(missing) - created.keys()
        if late:
            found.update(await repository.contact_ids_by_email(session, ctx.account_id, late))
    return found


async def relink_payments(
    session: AsyncSession,
    ctx: ActivityContext,
    changes: Changes,
    *,
    charge_ids: Collection[str] = (),
    customer_ids: Collection[str] = (),
) -> None:
    """Re-derive the links of the payments of these charges and of these customers."""
    if not charge_ids and not customer_ids:
        return
    rows = await repository.payment_links(
        session, ctx, charge_ids=charge_ids, customer_ids=customer_ids
    )
    guest_emails = {
        row.guest_email
        for row in rows
        if row.guest_email and not row.customer_deleted and row.customer_contact is None
    }
    by_email = await ensure_contacts(session, ctx, guest_emails, changes)
    moved = []
    for row in rows:
        if row.customer_deleted:
            desired = None
        elif row.customer_contact is not None:
            desired = row.customer_contact
        else:
            desired = by_email.get(row.guest_email) if row.guest_email else None
        if desired != row.contact_id:
            moved.append((int(row.id), desired))
        # Touched even when the link stays: the payment's own values may have changed.
        changes.touch(row.contact_id, desired)
    await repository.set_payment_contacts(session, moved)


async def relink_customers(
    session: AsyncSession, ctx: ActivityContext, stripe_ids: Collection[str], changes: Changes
) -> None:
    links = await repository.customer_links(session, ctx, stripe_ids)
    live = {email for email, deleted, _ in links.values() if email is not None and not deleted}
    by_email = await ensure_contacts(session, ctx, live, changes)
    moved = []
    for stripe_id, (email, deleted, current) in links.items():
        desired = by_email.get(email) if email is not None and not deleted else None
        if desired != current:
            moved.append((stripe_id, desired))
        changes.touch(current, desired)
    await repository.set_customer_contacts(session, ctx, moved)
    await relink_payments(session, ctx, changes, customer_ids=stripe_ids)


async def relink_checkouts(
    session: AsyncSession, ctx: ActivityContext, stripe_ids: Collection[str], changes: Changes
) -> dict[str, tuple[int | None, str | None]]:
    """Link each stored checkout session to the contact of its email; answers
    (contact_id, promotions) per session."""
    links = await repository.checkout_links(session, ctx, stripe_ids)
    emails = {email for email, _, _ in links.values() if email}
    by_email = await ensure_contacts(session, ctx, emails, changes)
    moved = []
    linked: dict[str, tuple[int | None, str | None]] = {}
    for stripe_id, (email, current, promotions) in links.items():
        desired = by_email.get(email) if email else None
        if desired != current:
            moved.append((stripe_id, desired))
            changes.touch(current, desired)
        linked[stripe_id] = (desired, promotions)
    await repository.set_checkout_contacts(session, ctx, moved)
    return linked


async def finish(session: AsyncSession, ctx: ActivityContext, changes: Changes) -> list[int]:
    """Drop contacts left without a source, recompute the touched ones, notify the hooks
    with the contacts that changed (created, consent moved, or activity differs)."""
    candidates = changes.touched | changes.changed
    # Lock them all first, in id order: two batches touching the same contacts then queue
    # instead of locking them in different orders (refresh, segments) and deadlocking.
    await repository.lock_contacts(session, ctx.account_id, candidates)
    removed = await repository.delete_sourceless_contacts(session, ctx.account_id, candidates)
    alive = candidates - removed
    refreshed = await repository.refresh_activity(session, ctx, alive)
    changed = sorted(
        await repository.existing_contacts(
            session, ctx.account_id, (changes.changed - removed) | refreshed
        )
    )
    await contacts_changed(session, ctx.account_id, changed)
    return changed
