"""`POST /webhooks/stripe`: verify, store, acknowledge. The work happens in the worker."""

from __future__ import annotations

import time

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.exc import SQLAlchemyError

from stripesync.config import Settings
from stripesync.kit import metrics
from stripesync.kit.errors import ApiError
from stripesync.kit.schemas import error_responses
from stripesync.webhooks.service import InvalidEventError, parse_event
from stripesync.webhooks.signature import SignatureError, verify_signature

log = structlog.get_logger(__name__)
router = APIRouter(tags=["webhooks"])


class WebhookAck(BaseModel):
    received: bool
    duplicate: bool


async def read_body_limited(request: Request, limit: int) -> bytes:
    """Read at most `limit` bytes; 413 as soon as the body is known to be larger."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"Body is larger than {limit} bytes.")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"Body is larger than {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _reject(status: int, code: str, message: str, outcome: str) -> ApiError:
    metrics.WEBHOOK_REQUESTS.labels(outcome=outcome).inc()
    return ApiError(status, code, message)


@router.post(
    "/webhooks/stripe",
    response_model=WebhookAck,
    responses=error_responses(400, 413, 503),
    openapi_extra={
        "parameters": [
            {
                "name": "Stripe-Signature",
                "in": "header",
                "required": True,
                "schema": {"type": "string"},
            }
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
    },
)
async def receive_stripe_webhook(request: Request) -> JSONResponse:
    started = time.perf_counter()
    settings: Settings = request.app.state.settings
    try:
        body = await read_body_limited(request, settings.webhook_max_body_bytes)
    except ApiError:
        metrics.WEBHOOK_REQUESTS.labels(outcome="too_large").inc()
        raise
    try:
        verify_signature(
            body,
            request.headers.get("stripe-signature"),
            [s.get_secret_value() for s in settings.stripe_webhook_secrets],
            now=time.time(),
            tolerance=settings.webhook_tolerance_seconds,
        )
    except SignatureError as exc:
        raise _reject(400, "invalid_signature", str(exc), "bad_signature") from None
    try:
        event = parse_event(body)
    except InvalidEventError as exc:
        raise _reject(400, "invalid_event", str(exc), "invalid_event") from None

    try:
        is_new = await request.app.state.inbox.store(event)
    except (SQLAlchemyError, OSError, ConnectionError, TimeoutError) as exc:
        log.warning("webhook_store_failed", event_id=event.id, error=type(exc).__name__)
        raise _reject(
            503, "database_unavailable", "Could not store the event; retry later.", "db_down"
        ) from None
    if is_new:
        request.app.state.enqueuer.schedule(event.id)
    metrics.WEBHOOK_REQUESTS.labels(outcome="stored" if is_new else "duplicate").inc()
    metrics.INGEST_LATENCY.observe(time.perf_counter() - started)
    return JSONResponse({"received": True, "duplicate": not is_new})
