"""All SQL of the webhook inbox."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import (
    PENDING_STATES,
    ConnectionStatus,
    EventState,
    StripeConnection,
    StripeEvent,
)


async def lock_event(session: AsyncSession, event_id: str) -> StripeEvent | None:
    """The event, row-locked; None when missing or when another worker holds it."""
    stmt = select(StripeEvent).where(StripeEvent.id == event_id).with_for_update(skip_locked=True)
    return (await session.execute(stmt)).scalar_one_or_none()


async def active_connection(
    session: AsyncSession, stripe_account_id: str
) -> StripeConnection | None:
    stmt = select(StripeConnection).where(
        StripeConnection.stripe_account_id == stripe_account_id,
        StripeConnection.status == ConnectionStatus.CONNECTED,
    )
    return (await session.execute(stmt)).scalar_one_or_none()


async def record_failure(
    session: AsyncSession,
    event_id: str,
    error: str,
    *,
    now: datetime,
    max_attempts: int,
    backoff: Callable[[int], timedelta],
) -> StripeEvent | None:
    """Count a failed try; the event becomes `failed` once it has used its tries."""
    event = await session.get(StripeEvent, event_id, with_for_update=True)
    if event is None or event.state not in PENDING_STATES:
        return event
    event.attempts += 1
    event.last_error = error[:2000]
    if event.attempts >= max_attempts:
        event.state = EventState.FAILED
        event.next_attempt_at = None
    else:
        event.state = EventState.RETRYING
        event.next_attempt_at = now + backoff(event.attempts)
    return event


async def due_events(
    session: AsyncSession,
    *,
    now: datetime,
    grace: timedelta,
    limit: int,
    after: tuple[datetime, str] | None = None,
) -> list[tuple[datetime, str]]:
    """Events stored but not done: received over `grace` ago, or retrying and due.

    Keyset-paginated by (received_at, id) so a large backlog is walked once per sweep.
    """
    stmt = (
        select(StripeEvent.received_at, StripeEvent.id)
        .where(
            StripeEvent.state.in_(PENDING_STATES),
            StripeEvent.received_at <= now - grace,
            or_(StripeEvent.next_attempt_at.is_(None), StripeEvent.next_attempt_at <= now),
        )
        .order_by(StripeEvent.received_at, StripeEvent.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(tuple_(StripeEvent.received_at, StripeEvent.id) > tuple_(*after))
    return [(row.received_at, row.id) for row in await session.execute(stmt)]


async def reset_for_replay(session: AsyncSession, event_id: str) -> bool:
    stmt = (
        update(StripeEvent)
        .where(StripeEvent.id == event_id)
        .values(state=EventState.RECEIVED, next_attempt_at=None, ignored_reason=None)
        .returning(StripeEvent.id)
    )
    return (await session.execute(stmt)).scalar_one_or_none() is not None


def account_filter(account_id: str) -> ColumnElement[bool]:
    """Events of a platform account (through its connections) or of a Stripe account id."""
    connected = select(StripeConnection.stripe_account_id).where(
        StripeConnection.account_id == account_id
    )
    return or_(StripeEvent.account == account_id, StripeEvent.account.in_(connected))
