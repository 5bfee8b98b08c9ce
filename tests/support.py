"""Helpers for tests: Stripe events built and signed as Stripe sends them."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx

from stripesync.webhooks.signature import signature_header
from tests.conftest import WEBHOOK_SECRET

API_VERSION = "2024-06-20"


def stripe_event(
    event_type: str = "customer.created",
    obj: dict[str, Any] | None = None,
    *,
    event_id: str | None = None,
    account: str | None = "acct_test_1",
    livemode: bool = False,
    created: int | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": API_VERSION,
        "account": account,
        "created": created if created is not None else int(time.time()),
        "livemode": livemode,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
        "data": {"object": obj or {"id": "cus_test_1", "object": "customer", "email": None}},
    }


def signed_headers(
    body: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Stripe-Signature": signature_header(secret, ts, body),
        "Content-Type": "application/json",
    }


async def deliver(
    client: httpx.AsyncClient, event: dict[str, Any], **kwargs: Any
) -> httpx.Response:
    body = json.dumps(event).encode()
    return await client.post(
        "/webhooks/stripe", content=body, headers=signed_headers(body, **kwargs)
    )
