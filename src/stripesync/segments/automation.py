"""Outbound automation triggers (api.md): stored in an outbox in the same transaction as the
change that caused them, then posted at least once, with backoff, signed per Standard
Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature`).

- `segment.entered` / `segment.exited` come from the membership diff (membership.py).
- `customer.first_purchase`, `customer.repeat_purchase`, `customer.payment_failed` and
  `customer.refunded` come from comparing a contact's activity times with a small stored
  snapshot (contact_activity_snapshots), so a replayed event produces nothing new. Only
  contacts with permission trigger them, and only for activity newer than
  `automation_event_max_age_hours` (a historical import does not replay years of
  purchases into the merchant's automations).
- `contact.subscribed` belongs to the opt-in and sync features and is not emitted here.

Triggers are stored only while `STRIPESYNC_AUTOMATION_WEBHOOK_URL` is set; the processes
call `configure(settings)` at startup.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.models import (
    PERMITTED_CONSENT,
    AutomationOutbox,
    ContactActivitySnapshot,
    OutboxState,
)

log = structlog.get_logger(__name__)

DELIVERY_BATCH = 20
MAX_BATCHES_PER_RUN = 50  # the next run (cron, every few seconds) goes on

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Turn triggers on (URL set) or off for this process; checks the secret is usable."""
    global _settings
    if settings.automation_webhook_url:
        settings.require("automation_webhook_secret")
        assert settings.automation_webhook_secret is not None
        signing_key(settings.automation_webhook_secret.get_secret_value())
    _settings = settings


def enabled() -> bool:
    return _settings is not None and bool(_settings.automation_webhook_url)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


# --- signing (Standard Webhooks) ------------------------------------------------------


def signing_key(secret: str) -> bytes:
    """A Standard Webhooks secret is `whsec_` + base64 of the key (the prefix is optional)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise ValueError(
            "STRIPESYNC_AUTOMATION_WEBHOOK_SECRET must be whsec_ followed by base64"
        ) from None
    if not key:
        raise ValueError("STRIPESYNC_AUTOMATION_WEBHOOK_SECRET is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


# --- activity triggers (called from the contacts-changed hook) -------------------------


def _advanced(before: datetime | None, after: datetime | None) -> bool:
    return after is not None and (before is None or after > before)


async def record_activity_triggers(
    session: AsyncSession, account_id: str, contact_ids: Collection[int], *, now: datetime
) -> int:
    """Store customer.* triggers for activity newer than the contacts' snapshots; the number
    stored. Keeps the snapshots current (only while triggers are on)."""
    if not enabled() or not contact_ids:
        return 0
    assert _settings is not None
    horizon = now - timedelta(hours=_settings.automation_event_max_age_hours)
    rows = (
        await session.execute(
            text(
                """
SELECT c.id, c.email, c.name, c.consent_state, c.purchase_count, c.total_spent,
       c.last_purchase_at, c.last_failed_at, c.last_refund_at,
       s.last_purchase_at AS seen_purchase, s.last_failed_at AS seen_failed,
       s.last_refund_at AS seen_refund
FROM contacts c LEFT JOIN contact_activity_snapshots s ON s.contact_id = c.id
WHERE c.account_id = :a AND c.id = ANY(CAST(:ids AS bigint[]))
ORDER BY c.id
"""
            ),
            {"a": account_id, "ids": sorted(contact_ids)},
        )
    ).all()
    permitted = {state.value for state in PERMITTED_CONSENT}
    messages: list[dict[str, Any]] = []
    snapshots: list[dict[str, Any]] = []
    for row in rows:
        snapshots.append(
            {
                "contact_id": row.id,
                "last_purchase_at": row.last_purchase_at,
                "last_failed_at": row.last_failed_at,
                "last_refund_at": row.last_refund_at,
            }
        )
        if row.consent_state not in permitted:
            continue
        types: list[str] = []
        if _advanced(row.seen_purchase, row.last_purchase_at) and row.last_purchase_at >= horizon:
            if row.purchase_count == 1:
                types.append("customer.first_purchase")
            elif row.purchase_count >= 2:
                types.append("customer.repeat_purchase")
        if _advanced(row.seen_failed, row.last_failed_at) and row.last_failed_at >= horizon:
            types.append("customer.payment_failed")
        if _advanced(row.seen_refund, row.last_refund_at) and row.last_refund_at >= horizon:
            types.append("customer.refunded")
        contact = {
            "id": str(row.id),
            "email": row.email,
            "name": row.name,
            "purchase_count": row.purchase_count,
            "total_spent": [
                {"amount": amount, "currency": currency}
                for currency, amount in sorted(row.total_spent.items())
            ],
            "last_purchase_at": iso(row.last_purchase_at) if row.last_purchase_at else None,
        }
        for event_type in types:
            messages.append(
                {
                    "account_id": account_id,
                    "message_id": new_message_id(),
                    "event_type": event_type,
                    "payload": {
                        "type": event_type,
                        "timestamp": iso(now),
                        "data": {"account_id": account_id, "contact": contact},
                    },
                    "next_attempt_at": now,
                }
            )
    if snapshots:
        stmt = insert(ContactActivitySnapshot).values(snapshots)
        stmt = stmt.on_conflict_do_update(
            index_elements=[ContactActivitySnapshot.contact_id],
            set_={
                "last_purchase_at": stmt.excluded.last_purchase_at,
                "last_failed_at": stmt.excluded.last_failed_at,
                "last_refund_at": stmt.excluded.last_refund_at,
            },
        )
        await session.execute(stmt)
    if messages:
        await session.execute(insert(AutomationOutbox).values(messages))
    return len(messages)


# --- delivery ----------------------------------------------------------------------------


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    """Exponential backoff with ±20% jitter, capped at one hour."""
    base = min(settings.automation_retry_base_seconds * 2 ** max(attempts - 1, 0), 3600.0)
    return timedelta(seconds=base * random.uniform(0.8, 1.2))


async def _post(
    http: httpx.AsyncClient, settings: Settings, message_id: str, payload: dict[str, Any]
) -> str | None:
    """Post one message; None when the receiver took it (2xx), else what went wrong."""
    assert settings.automation_webhook_url and settings.automation_webhook_secret
    body = json.dumps(payload, separators=(",", ":")).encode()
    timestamp = int(utcnow().timestamp())
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(
            settings.automation_webhook_secret.get_secret_value(), message_id, timestamp, body
        ),
    }
    try:
        response = await http.post(
            settings.automation_webhook_url, content=body, headers=headers, timeout=10.0
        )
    except httpx.HTTPError as exc:
        return type(exc).__name__
    if 200 <= response.status_code < 300:
        return None
    return f"HTTP {response.status_code}"


async def deliver_due(factory: SessionFactory, http: httpx.AsyncClient, settings: Settings) -> int:
    """Post every due message (a batch per transaction, rows locked so two workers never
    post the same one at once); the number delivered. Undelivered ones are retried with
    backoff until `automation_max_attempts`, then left as `failed`."""
    if not settings.automation_webhook_url:
        return 0
    delivered = 0
    for _ in range(MAX_BATCHES_PER_RUN):
        async with transaction(factory) as session:
            now = utcnow()
            stmt = (
                select(AutomationOutbox)
                .where(
                    AutomationOutbox.state == OutboxState.PENDING,
                    AutomationOutbox.next_attempt_at <= now,
                )
                .order_by(AutomationOutbox.id)
                .limit(DELIVERY_BATCH)
                .with_for_update(skip_locked=True)
            )
            batch = list((await session.scalars(stmt)).all())
            for message in batch:
                error = await _post(http, settings, message.message_id, message.payload)
                message.attempts += 1
                if error is None:
                    message.state = OutboxState.DELIVERED
                    message.delivered_at = utcnow()
                    message.last_error = None
                    delivered += 1
                    continue
                message.last_error = error
                if message.attempts >= settings.automation_max_attempts:
                    message.state = OutboxState.FAILED
                    log.warning("automation_gave_up", message_id=message.message_id, error=error)
                else:
                    message.next_attempt_at = utcnow() + retry_delay(settings, message.attempts)
        if len(batch) < DELIVERY_BATCH:
            break
    return delivered
