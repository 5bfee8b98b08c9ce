"""Applying what an import read, through the same apply functions as webhook events.

Nothing here decides anything about customers, payments or consent: each object goes to
`activity.service.apply_*` (idempotent, order-independent, hooks included: segments,
the one opt-in email, sync). The pages applied in one transaction (those read meanwhile)
share one `service.collected_changes`, each list's pages as one batch stamped with their
earliest fetch time: the contacts they touched are recorded with them (`import_touched`),
and finished once the lists are read (`finish_touched`: recomputed, hooks told), each
contact once however many pages touched it, while the payments stored beside their
customer's uncommitted row are relinked (`relink_payments_off_customer`: their contacts are
owed a finish again). This module only counts what happened, for the job report.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import linking, service
from stripesync.activity import repository as activity_repository
from stripesync.activity.context import ActivityContext
from stripesync.imports import repository
from stripesync.models import ConsentState

# Outcome keys of the report: `imported.<list>` per object applied, `skipped.<reason>`
# per object that made no contact, and per person (customers, checkout buyers) one of
# `contacts.new`, `contacts.already_contact` or a consent that keeps them out.
CLOSED_CONSENT = {ConsentState.DECLINED: "declined", ConsentState.UNSUBSCRIBED: "unsubscribed"}


@dataclass(frozen=True)
class PageOfObjects:
    """Objects of one Stripe list as one read returned them, stamped with its fetch time."""

    ctx: ActivityContext  # observed_at: when the page was fetched
    resource: str
    objects: Sequence[dict[str, Any]]


async def apply_pages(
    session: AsyncSession,
    job_id: str,
    pages: Sequence[PageOfObjects],
    *,
    job_started_at: datetime,
) -> list[Counter[str]]:
    """Apply pages of one account (each with its own fetch time); the contacts they touched
    are owed a finish (`finish_touched`). The pages of one list go to its apply function
    as ONE batch, so a transaction costs a fixed number of statements per list, however
    many pages it holds. Answers each page's outcome counts."""
    counts = [Counter[str]() for _ in pages]
    people: list[list[str]] = [[] for _ in pages]
    async with service.collected_changes(session, pages[0].ctx) as collected:
        for resource in dict.fromkeys(page.resource for page in pages):
            mine = [i for i, page in enumerate(pages) if page.resource == resource]
            await _apply_list(
                session,
                resource,
                [pages[i] for i in mine],
                [counts[i] for i in mine],
                [people[i] for i in mine],
            )
    changes = collected.changes
    await repository.note_touched(session, job_id, changes.touched, changes.changed)
    everyone = sorted({email for page_people in people for email in page_people})
    if everyone:
        states = await repository.contact_states(session, pages[0].ctx.account_id, everyone)
        for page_counts, page_people in zip(counts, people, strict=True):
            for email in page_people:
                page_counts[_person_outcome(states.get(email), job_started_at)] += 1
    return counts


# The contacts owed a finish are finished this many per transaction.
FINISH_BATCH = 1_000


async def finish_touched(
    session: AsyncSession,
    ctx: ActivityContext,
    job_id: str,
    limit: int,
    after: int = 0,
    upto: int | None = None,
) -> list[int]:
    """Finish up to `limit` of the contacts the job's pages touched, lowest ids above
    `after` (and none above `upto`) first (`linking.finish`: drop those left without a
    source, recompute the others' activity, tell the hooks), each once however many pages
    touched it; answers their ids in order (none: none left there that another transaction
    is not finishing)."""
    touched, changed = await repository.take_touched(session, job_id, limit, after, upto)
    if touched:
        await linking.finish(session, ctx, linking.Changes(touched=touched, changed=changed))
    return sorted(touched)


async def relink_payments_off_customer(
    session: AsyncSession, ctx: ActivityContext, job_id: str, *, after: int, limit: int
) -> int | None:
    """Re-derive the links of up to `limit` payments above id `after` that are off their
    stored customer's contact; the contacts they leave and join are owed a finish. Answers
    the last payment id looked at, None when none is left.

    Appliers run in parallel: one applying a customer and another its payment at the same
    time each miss the other's uncommitted row, and the payment keeps the link it had
    without its customer. Once the lists are read, every customer is committed, so one
    pass over the account's payments finds and mends them all."""
    found = await activity_repository.payments_off_their_customer(session, ctx, after, limit)
    if not found:
        return None
    changes = linking.Changes()
    await linking.relink_payments(session, ctx, changes, charge_ids={c for _, c in found})
    await repository.note_touched(session, job_id, changes.touched, changes.changed)
    return found[-1][0]


async def _apply_list(
    session: AsyncSession,
    resource: str,
    pages: Sequence[PageOfObjects],
    counts: Sequence[Counter[str]],
    people: Sequence[list[str]],
) -> None:
    """Apply pages of one list as one batch; count each page's skips in its `counts` and
    note its people's addresses in its `people`.

    The batch is stamped with the EARLIEST of the pages' fetch times: an object can only
    be older than it really is, so a webhook event created after any of these fetches still
    wins over it, as it would over its own page (repository.py: the order rules)."""
    ctx = min((page.ctx for page in pages), key=lambda c: c.observed_at)
    lives: list[list[dict[str, Any]]] = []
    for page, page_counts in zip(pages, counts, strict=True):
        live = [o for o in page.objects if bool(o.get("livemode", ctx.livemode)) == ctx.livemode]
        if len(live) < len(page.objects):  # never touches live data
            page_counts["skipped.test_mode"] += len(page.objects) - len(live)
        if live:
            page_counts[f"imported.{resource}"] += len(live)
        lives.append(live)
    kept = lives  # per page, the objects whose outcome is counted, in batch order
    if resource == "customers":
        gone = [obj for live in lives for obj in live if obj.get("deleted") is True]
        kept = [[obj for obj in live if obj.get("deleted") is not True] for live in lives]
        if gone:
            await service.apply_customers(session, ctx, gone, deleted=True)
        applied = await service.apply_customers(session, ctx, _flat(kept))
    elif resource == "checkout_sessions":
        applied = await service.apply_checkout_sessions(session, ctx, _flat(kept))
    elif resource == "charges":
        applied = await service.apply_charges(session, ctx, _flat(kept))
    elif resource == "subscriptions":
        applied = await service.apply_subscriptions(session, ctx, _flat(kept))
    else:  # pragma: no cover - the plan only holds the lists above
        raise ValueError(f"unknown list {resource}")
    results = iter(applied)
    for page_objects, page_counts, page_people in zip(kept, counts, people, strict=True):
        for result in itertools.islice(results, len(page_objects)):
            # Per object that made no contact (a guest payment nobody can be reached for,
            # ...) and, for people (customers, checkout buyers), what became of their contact.
            if result.skipped_reason is not None:
                page_counts[f"skipped.{result.skipped_reason}"] += 1
            elif result.email is not None:
                page_people.append(result.email)


def _flat(lists: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [obj for objects in lists for obj in objects]


def _person_outcome(state: tuple[str, datetime] | None, job_started_at: datetime) -> str:
    if state is None:
        return "skipped.no_contact"
    if state[0] in CLOSED_CONSENT:
        return f"skipped.{CLOSED_CONSENT[ConsentState(state[0])]}"
    return "contacts.already_contact" if state[1] < job_started_at else "contacts.new"
