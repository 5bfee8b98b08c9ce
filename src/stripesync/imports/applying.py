"""Applying what an import read, through the same apply functions as webhook events.

Nothing here decides anything about customers, payments or consent: each object goes to
`activity.service.apply_*` (idempotent, order-independent, hooks included: segments,
the one opt-in email, sync), inside one `service.deferred_finish` per page: the touched
contacts are recomputed and the hooks told once per page, not once per object. This module
only counts what happened, for the job report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.activity import service
from stripesync.activity.context import ActivityContext
from stripesync.imports import repository
from stripesync.models import ConsentState

# Outcome keys of the report: `imported.<list>` per object applied, `skipped.<reason>`
# per object that made no contact, and per person (customers, checkout buyers) one of
# `contacts.new`, `contacts.already_contact` or a consent that keeps them out.
CLOSED_CONSENT = {ConsentState.DECLINED: "declined", ConsentState.UNSUBSCRIBED: "unsubscribed"}


async def apply_objects(
    session: AsyncSession,
    ctx: ActivityContext,
    resource: str,
    objects: Sequence[dict[str, Any]],
    *,
    job_started_at: datetime,
) -> Counter[str]:
    """Apply one page of `resource` objects (one batch per kind); answers the outcome counts."""
    counts: Counter[str] = Counter()
    people: list[str] = []
    live = [obj for obj in objects if bool(obj.get("livemode", ctx.livemode)) == ctx.livemode]
    if len(live) < len(objects):
        counts["skipped.test_mode"] += len(objects) - len(live)  # never touches live data
    if live:
        counts[f"imported.{resource}"] += len(live)
    async with service.deferred_finish(session, ctx):
        if resource == "customers":
            gone = [obj for obj in live if obj.get("deleted") is True]
            present = [obj for obj in live if obj.get("deleted") is not True]
            await service.apply_customers(session, ctx, gone, deleted=True)
            applied = await service.apply_customers(session, ctx, present)
        elif resource == "checkout_sessions":
            applied = await service.apply_checkout_sessions(session, ctx, live)
        elif resource == "charges":
            applied = await service.apply_charges(session, ctx, live)
        elif resource == "subscriptions":
            applied = await service.apply_subscriptions(session, ctx, live)
        else:  # pragma: no cover - the plan only holds the lists above
            raise ValueError(f"unknown list {resource}")
    for result in applied:
        # Per object that made no contact (a guest payment nobody can be reached for, ...)
        # and, for people (customers, checkout buyers), what became of their contact.
        if result.skipped_reason is not None:
            counts[f"skipped.{result.skipped_reason}"] += 1
        elif result.email is not None:
            people.append(result.email)
    if people:
        states = await repository.contact_states(session, ctx.account_id, sorted(set(people)))
        for email in people:
            state = states.get(email)
            if state is None:
                counts["skipped.no_contact"] += 1
            elif state[0] in CLOSED_CONSENT:
                counts[f"skipped.{CLOSED_CONSENT[ConsentState(state[0])]}"] += 1
            elif state[1] < job_started_at:
                counts["contacts.already_contact"] += 1
            else:
                counts["contacts.new"] += 1
    return counts
