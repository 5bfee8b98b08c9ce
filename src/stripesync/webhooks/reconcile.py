"""The webhook reconciler: events Stripe could not deliver, fetched and stored anyway.

Stripe retries a failed delivery for days, but an endpoint can miss an event for good
(a long outage, a delivery Stripe gave up on, a network path that ate it). Per active
connection this cron job lists `GET /v1/events?delivery_success=false` (events still pending
or failed, the last 30 days: Stripe keeps no more) on behalf of the connected account and
stores each through the same `INSERT ... ON CONFLICT (id) DO NOTHING` as the webhook
endpoint, then enqueues the new ones. An event that did arrive meanwhile (or arrives later
by Stripe's own retry) is a duplicate and changes nothing.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.clients.stripe import StripeClient, StripeError, StripeUnavailable
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.kit.queue import enqueue_events
from stripesync.models import ConnectionStatus, StripeConnection
from stripesync.webhooks.service import InvalidEventError, ParsedEvent, insert_events, parse_event

log = structlog.get_logger(__name__)

EVENTS_PATH = "/v1/events"
LOOKBACK = timedelta(days=30)
PAGE_SIZE = 100


def _parsed(obj: dict[str, Any], stripe_account: str) -> ParsedEvent | None:
    """The event as the endpoint would have stored it; events listed on behalf of a
    connected account may come without `account`, which is that account."""
    if not obj.get("account"):
        obj = {**obj, "account": stripe_account}
    if obj.get("account") != stripe_account:
        return None  # never store another account's event under this connection
    try:
        return parse_event(json.dumps(obj, separators=(",", ":")).encode())
    except InvalidEventError:
        return None


async def reconcile_connection(
    client: StripeClient,
    engine: AsyncEngine,
    redis: Any,
    connection: StripeConnection,
    *,
    max_pages: int,
) -> int:
    """Store (and enqueue) this connection's undelivered events; answers how many were new."""
    since = int((utcnow() - LOOKBACK).timestamp())
    params: dict[str, Any] = {
        "delivery_success": "false",
        "limit": PAGE_SIZE,
        "created[gte]": since,
    }
    new_total = 0
    for _ in range(max_pages):
        page = await client.get(
            EVENTS_PATH, stripe_account=connection.stripe_account_id, params=params
        )
        data = page.get("data")
        if not isinstance(data, list):
            raise StripeUnavailable("Stripe answered an event list without data")
        events = [
            parsed
            for obj in data
            if isinstance(obj, dict)
            and obj.get("livemode") == connection.livemode
            and (parsed := _parsed(obj, connection.stripe_account_id)) is not None
        ]
        if events:
            async with engine.begin() as conn:
                new_ids = await insert_events(conn, events)
            if new_ids:
                # Stored first: if this enqueue fails the event sweeper enqueues them.
                await enqueue_events(redis, sorted(new_ids))
            new_total += len(new_ids)
        if not page.get("has_more") or not data:
            break
        params["starting_after"] = str(data[-1]["id"])
    return new_total


async def reconcile_stripe_events(ctx: dict[str, Any]) -> int:
    """Cron job: every active connection's undelivered events, stored and enqueued."""
    settings: Settings = ctx["settings"]
    factory: SessionFactory = ctx["session_factory"]
    async with transaction(factory) as session:
        connections = list(
            await session.scalars(
                select(StripeConnection)
                .where(StripeConnection.status == ConnectionStatus.CONNECTED)
                .order_by(StripeConnection.id)
            )
        )
    client = StripeClient(ctx["http"], settings)
    total = 0
    for connection in connections:
        try:
            new = await reconcile_connection(
                client,
                ctx["engine"],
                ctx["redis"],
                connection,
                max_pages=settings.stripe_reconcile_max_pages,
            )
        except (StripeError, StripeUnavailable) as exc:
            # One account's trouble (revoked token, Stripe down) must not stop the others;
            # the next run tries again.
            log.warning(
                "reconcile_failed",
                account_id=connection.account_id,
                connection_id=connection.id,
                error=type(exc).__name__,
                status=getattr(exc, "status", None),
            )
            continue
        if new:
            log.info(
                "reconciled_events",
                account_id=connection.account_id,
                connection_id=connection.id,
                count=new,
            )
        total += new
    return total
