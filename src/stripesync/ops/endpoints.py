"""Operators' API: stored events and their replay."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import structlog
from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy import select, tuple_

from stripesync.db import DbSession, after_commit
from stripesync.kit.auth import require_ops_token
from stripesync.kit.errors import ApiError
from stripesync.kit.pagination import decode_cursor, encode_cursor
from stripesync.kit.queue import enqueue_event
from stripesync.kit.schemas import error_responses
from stripesync.models import StripeEvent
from stripesync.ops.schemas import ReplayAccepted, StoredEvent, StoredEventList
from stripesync.webhooks import repository

log = structlog.get_logger(__name__)
router = APIRouter(
    prefix="/v1/ops",
    tags=["ops"],
    dependencies=[Depends(require_ops_token)],
    responses=error_responses(401, 422),
)

EventStateParam = Literal["received", "retrying", "processed", "ignored", "failed"]


@router.get("/events", response_model=StoredEventList)
async def list_events(
    session: DbSession,
    state: EventStateParam | None = None,
    account_id: Annotated[str | None, Query(max_length=255)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> StoredEventList:
    """Stored Stripe events, newest first; `state=failed` lists what needs an operator."""
    stmt = select(StripeEvent).order_by(StripeEvent.received_at.desc(), StripeEvent.id.desc())
    if state is not None:
        stmt = stmt.where(StripeEvent.state == state)
    if account_id is not None:
        stmt = stmt.where(repository.account_filter(account_id))
    if cursor is not None:
        received_at, event_id = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(str(received_at)), str(event_id))
        except ValueError:
            raise ApiError(
                422, "invalid_cursor", "The cursor is not one this API gave out."
            ) from None
        stmt = stmt.where(tuple_(StripeEvent.received_at, StripeEvent.id) < tuple_(*after))
    rows = list((await session.scalars(stmt.limit(limit + 1))).all())
    page = rows[:limit]
    next_cursor = (
        encode_cursor(page[-1].received_at.isoformat(), page[-1].id) if len(rows) > limit else None
    )
    return StoredEventList(
        events=[StoredEvent.model_validate(e, from_attributes=True) for e in page],
        next_cursor=next_cursor,
    )


@router.post(
    "/events/{event_id}/replay",
    status_code=202,
    response_model=ReplayAccepted,
    responses=error_responses(404),
)
async def replay_event(
    request: Request,
    session: DbSession,
    event_id: Annotated[str, Path(max_length=255)],
) -> ReplayAccepted:
    """Process a stored event again (handlers are idempotent, so a replay is safe)."""
    if not await repository.reset_for_replay(session, event_id):
        raise ApiError(404, "event_not_found", f"No stored event {event_id}.")
    # If Redis is down the sweeper enqueues it once Redis answers.
    after_commit(session, lambda: enqueue_event(request.app.state.redis, event_id))
    return ReplayAccepted(event_id=event_id, state="received")
