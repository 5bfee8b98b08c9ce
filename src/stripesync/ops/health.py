"""Liveness, readiness and Prometheus metrics (no auth: bind them to an internal network)."""

from __future__ import annotations

import asyncio

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from stripesync.kit import metrics
from stripesync.kit.clock import utcnow
from stripesync.models import PENDING_STATES, StripeEvent

log = structlog.get_logger(__name__)
router = APIRouter(tags=["health"])

_CHECK_TIMEOUT = 2.0
_WATCHED_STATES = ("received", "retrying", "failed")


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check_postgres(request: Request) -> None:
    async with request.app.state.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def _check_redis(request: Request) -> None:
    await request.app.state.redis.ping()


@router.get("/readyz", responses={503: {"description": "Postgres or Redis does not answer"}})
async def readyz(request: Request) -> JSONResponse:
    checks = {"postgres": _check_postgres, "redis": _check_redis}
    results: dict[str, str] = {}
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(request), _CHECK_TIMEOUT)
            results[name] = "ok"
        except Exception as exc:
            results[name] = f"down: {type(exc).__name__}"
    ready = all(v == "ok" for v in results.values())
    return JSONResponse({"ready": ready, "checks": results}, status_code=200 if ready else 503)


async def _refresh_shared_gauges(request: Request) -> None:
    try:
        depth = await asyncio.wait_for(request.app.state.redis.zcard("arq:queue"), _CHECK_TIMEOUT)
        metrics.QUEUE_DEPTH.set(depth)
    except Exception as exc:
        log.debug("metrics_redis_unavailable", error=type(exc).__name__)
    try:
        async with request.app.state.session_factory() as session:
            # Only the states an operator acts on: counting processed events would scan
            # the whole table on every scrape.
            rows = await session.execute(
                select(StripeEvent.state, func.count())
                .where(StripeEvent.state.in_(_WATCHED_STATES))
                .group_by(StripeEvent.state)
            )
            counts = dict(rows.tuples().all())
            oldest = await session.scalar(
                select(func.min(StripeEvent.received_at)).where(
                    StripeEvent.state.in_(PENDING_STATES)
                )
            )
        for state in _WATCHED_STATES:
            metrics.EVENTS_BY_STATE.labels(state=state).set(counts.get(state, 0))
        age = (utcnow() - oldest).total_seconds() if oldest else 0.0
        metrics.OLDEST_PENDING_EVENT_AGE.set(max(age, 0.0))
    except Exception as exc:
        log.debug("metrics_postgres_unavailable", error=type(exc).__name__)


@router.get("/metrics", response_class=Response)
async def prometheus_metrics(request: Request) -> Response:
    await _refresh_shared_gauges(request)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
