"""Ops API, health, readiness and metrics."""

from __future__ import annotations

from typing import Any

import httpx
from sqlalchemy import update

from stripesync.db import SessionFactory, transaction
from stripesync.models import StripeEvent
from tests.conftest import ops_headers, platform_headers
from tests.support import deliver, stripe_event


async def test_ops_routes_need_the_ops_token(app_client: httpx.AsyncClient) -> None:
    for headers in (
        {},
        platform_headers,
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic x"},
    ):
        response = await app_client.get("/v1/ops/events", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
    assert (await app_client.get("/v1/ops/events", headers=ops_headers)).status_code == 200


async def test_failed_events_are_listed_with_attempts_and_error_and_paginated(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    events = [stripe_event(account="acct_a") for _ in range(3)] + [stripe_event(account="acct_b")]
    for event in events:
        await deliver(app_client, event)
    async with transaction(session_factory) as session:
        await session.execute(
            update(StripeEvent)
            .where(StripeEvent.id != events[0]["id"])
            .values(state="failed", attempts=8, last_error="RuntimeError: boom")
        )

    page1 = (
        await app_client.get("/v1/ops/events?state=failed&limit=2", headers=ops_headers)
    ).json()
    assert len(page1["events"]) == 2 and page1["next_cursor"]
    page2 = (
        await app_client.get(
            f"/v1/ops/events?state=failed&limit=2&cursor={page1['next_cursor']}",
            headers=ops_headers,
        )
    ).json()
    listed = [e["id"] for e in page1["events"] + page2["events"]]
    assert sorted(listed) == sorted(e["id"] for e in events[1:])
    assert page2["next_cursor"] is None
    assert all(
        e["attempts"] == 8 and e["last_error"] == "RuntimeError: boom" for e in page1["events"]
    )

    only_a = (
        await app_client.get("/v1/ops/events?state=failed&account_id=acct_a", headers=ops_headers)
    ).json()
    assert {e["account"] for e in only_a["events"]} == {"acct_a"} and len(only_a["events"]) == 2


async def test_bad_query_values_are_422_not_500(app_client: httpx.AsyncClient) -> None:
    for query in ("state=bogus", "limit=0", "limit=abc", "cursor=%%%", "cursor=WyJ4Il0"):
        response = await app_client.get(f"/v1/ops/events?{query}", headers=ops_headers)
        assert response.status_code == 422, query
        assert response.json()["error"]["code"] in {"validation_error", "invalid_cursor"}


async def test_replay_resets_a_failed_event_and_enqueues_it(
    app_client: httpx.AsyncClient, session_factory: SessionFactory
) -> None:
    event = stripe_event()
    await deliver(app_client, event)
    redis: Any = app_client.app.state.redis  # type: ignore[attr-defined]
    await app_client.app.state.enqueuer.drain()  # type: ignore[attr-defined]
    await redis.flushdb()
    async with transaction(session_factory) as session:
        await session.execute(update(StripeEvent).values(state="failed", attempts=8))

    response = await app_client.post(f"/v1/ops/events/{event['id']}/replay", headers=ops_headers)
    assert response.status_code == 202
    async with session_factory() as session:
        row = await session.get(StripeEvent, event["id"])
    assert row is not None and row.state == "received"
    assert await redis.zscore("arq:queue", event["id"]) is not None

    missing = await app_client.post("/v1/ops/events/evt_nope/replay", headers=ops_headers)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "event_not_found"


async def test_health_readiness_and_metrics(app_client: httpx.AsyncClient) -> None:
    assert (await app_client.get("/healthz")).json() == {"status": "ok"}
    ready = await app_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"postgres": "ok", "redis": "ok"}
    await deliver(app_client, stripe_event())
    await app_client.post("/webhooks/stripe", content=b"{}")
    text = (await app_client.get("/metrics")).text
    assert 'stripesync_webhook_requests_total{outcome="stored"}' in text
    assert 'stripesync_webhook_requests_total{outcome="bad_signature"}' in text
    assert 'stripesync_events{state="received"} 1.0' in text
    assert "stripesync_queue_depth" in text
    assert "stripesync_webhook_ingest_seconds_bucket" in text


async def test_unknown_routes_and_methods_use_the_error_shape(
    app_client: httpx.AsyncClient,
) -> None:
    response = await app_client.get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    response = await app_client.get("/webhooks/stripe")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


async def test_unexpected_errors_answer_500_without_detail_and_log_no_path_values(
    settings: Any, engine: Any
) -> None:
    from structlog.testing import capture_logs

    from stripesync.app import create_app

    app = create_app(settings)

    @app.get("/boom/{secret}")
    async def boom(secret: str) -> None:
        raise RuntimeError("kaboom")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with capture_logs() as logs:
                response = await client.get("/boom/tok_supersecret_value")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert "kaboom" not in response.text and "Traceback" not in response.text
    logged = "\n".join(str(entry) for entry in logs)
    assert "/boom/{secret}" in logged
    assert "tok_supersecret_value" not in logged
