"""POST /webhooks/stripe: verify, store once, acknowledge; the documented 4xx otherwise."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.app import create_app
from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.models import StripeEvent
from tests.conftest import OLD_WEBHOOK_SECRET, make_settings
from tests.support import deliver, signed_headers, stripe_event


async def count_events(session_factory: SessionFactory) -> int:
    async with session_factory() as session:
        return int(await session.scalar(select(func.count()).select_from(StripeEvent)) or 0)


async def test_valid_event_is_stored_with_its_envelope(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    event = stripe_event(
        "charge.succeeded", {"id": "ch_1", "object": "charge"}, created=1_700_000_000
    )
    response = await deliver(app_client, event)
    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    async with session_factory() as session:
        stored = await session.get(StripeEvent, event["id"])
    assert stored is not None
    assert (stored.type, stored.account, stored.livemode) == (
        "charge.succeeded",
        "acct_test_1",
        False,
    )
    assert stored.api_version == event["api_version"]
    assert int(stored.created.timestamp()) == 1_700_000_000
    assert stored.payload == event
    assert (stored.state, stored.attempts, stored.last_error) == ("received", 0, None)


async def test_event_is_enqueued_with_its_id_as_job_id(
    app_client: httpx.AsyncClient,
) -> None:
    event = stripe_event()
    await deliver(app_client, event)
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    redis = app_client.app.state.redis  # type: ignore[attr-defined]
    assert await redis.exists(f"arq:job:{event['id']}") == 1
    assert await redis.zscore("arq:queue", event["id"]) is not None


async def test_secret_being_rotated_out_still_verifies(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    response = await deliver(app_client, stripe_event(), secret=OLD_WEBHOOK_SECRET)
    assert response.status_code == 200
    assert await count_events(session_factory) == 1


async def test_same_event_delivered_20_times_concurrently_is_stored_once(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    event = stripe_event()
    responses = await asyncio.gather(*(deliver(app_client, event) for _ in range(20)))
    assert [r.status_code for r in responses] == [200] * 20
    assert sum(1 for r in responses if not r.json()["duplicate"]) == 1
    assert await count_events(session_factory) == 1
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    redis = app_client.app.state.redis  # type: ignore[attr-defined]
    assert await redis.zcard("arq:queue") == 1


async def test_many_distinct_concurrent_events_are_all_stored(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    events = [stripe_event() for _ in range(60)]
    responses = await asyncio.gather(*(deliver(app_client, e) for e in events))
    assert all(r.status_code == 200 and not r.json()["duplicate"] for r in responses)
    assert await count_events(session_factory) == 60


def _error_code(response: httpx.Response) -> str:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    return str(body["error"]["code"])


async def test_unsigned_wrong_and_stale_signatures_are_400_and_store_nothing(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    body = json.dumps(stripe_event()).encode()
    cases: list[dict[str, str]] = [
        {},
        signed_headers(body, secret="whsec_wrong"),
        signed_headers(body, timestamp=int(time.time()) - 301),
        signed_headers(body, timestamp=int(time.time()) + 301),
        {"Stripe-Signature": "t=notanumber,v1=abc"},
    ]
    for headers in cases:
        response = await app_client.post("/webhooks/stripe", content=body, headers=headers)
        assert response.status_code == 400, headers
        assert _error_code(response) == "invalid_signature"
    assert await count_events(session_factory) == 0


async def test_signed_but_malformed_bodies_are_400(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    bodies: list[bytes] = [
        b"not json",
        b"\xff\xfe\x00",
        b"[]",
        b'{"object": "customer"}',
        json.dumps({**stripe_event(), "id": 12}).encode(),
        json.dumps({**stripe_event(), "created": "yesterday"}).encode(),
        json.dumps({**stripe_event(), "livemode": "no"}).encode(),
        json.dumps({**stripe_event(), "data": {}}).encode(),
        b"[" * 100_000 + b"]" * 100_000,
    ]
    for body in bodies:
        response = await app_client.post(
            "/webhooks/stripe", content=body, headers=signed_headers(body)
        )
        assert response.status_code == 400, body[:40]
        assert _error_code(response) == "invalid_event"
    assert await count_events(session_factory) == 0


async def test_body_over_512_kib_is_413(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    event: dict[str, Any] = stripe_event()
    event["data"]["object"]["padding"] = "x" * (512 * 1024)
    body = json.dumps(event).encode()
    response = await app_client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
    assert response.status_code == 413
    assert _error_code(response) == "payload_too_large"

    async def chunks() -> Any:  # no Content-Length: the limit applies while streaming
        for _ in range(600):
            yield b"x" * 1024

    response = await app_client.post(
        "/webhooks/stripe", content=chunks(), headers={"Stripe-Signature": "t=1,v1=00"}
    )
    assert response.status_code == 413
    assert await count_events(session_factory) == 0


async def test_nul_characters_are_stored_without_failing(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    event = stripe_event(
        "customer.created", {"id": "cus_1", "object": "customer", "name": "a\u0000b"}
    )
    response = await deliver(app_client, event)
    assert response.status_code == 200
    async with session_factory() as session:
        stored = await session.get(StripeEvent, event["id"])
    assert stored is not None and stored.payload["data"]["object"]["name"] == "ab"


async def test_database_unreachable_is_503(settings: Settings, engine: AsyncEngine) -> None:
    broken = make_settings("postgresql://postgres@127.0.0.1:1/nowhere", str(settings.redis_url))
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await deliver(client, stripe_event())
            ready = await client.get("/readyz")
    assert response.status_code == 503
    assert _error_code(response) == "database_unavailable"
    assert ready.status_code == 503 and ready.json()["checks"]["postgres"].startswith("down")


async def test_unstorable_characters_never_fail_the_events_sharing_their_commit(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    good = [stripe_event() for _ in range(20)]
    surrogate = stripe_event("customer.created", {"id": "cus_s", "object": "customer"})
    surrogate_body = json.dumps(surrogate).replace('"cus_s"', '"cus_\\ud800s"').encode()
    nul_id = json.dumps(stripe_event(event_id="evt_\u0000nul")).encode()

    async def post(body: bytes) -> httpx.Response:
        return await app_client.post("/webhooks/stripe", content=body, headers=signed_headers(body))

    bodies = [json.dumps(e).encode() for e in good] + [surrogate_body, nul_id]
    responses = await asyncio.gather(*(post(b) for b in bodies))
    statuses = [r.status_code for r in responses]
    assert statuses[:21] == [200] * 21
    assert statuses[21] == 400 and _error_code(responses[21]) == "invalid_event"
    assert await count_events(session_factory) == 21
    async with session_factory() as session:
        stored = await session.get(StripeEvent, surrogate["id"])
    assert stored is not None and stored.payload["data"]["object"]["id"] == "cus_?s"
