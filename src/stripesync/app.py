"""create_app(): routers, lifespan (engine, inbox, Redis, HTTP client), error handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from stripesync import __version__
from stripesync.accounts import endpoints as account_endpoints
from stripesync.activity import endpoints as activity_endpoints
from stripesync.config import SERVE_REQUIRES, Settings
from stripesync.db import create_engine, create_session_factory
from stripesync.imports import endpoints as import_endpoints
from stripesync.kit.bodylimit import BodySizeLimit
from stripesync.kit.errors import install_error_handlers
from stripesync.kit.queue import create_redis
from stripesync.ops import endpoints as ops_endpoints
from stripesync.ops import health
from stripesync.optin import endpoints as optin_endpoints
from stripesync.optin import pages as optin_pages
from stripesync.optin.tasks import use_queue as use_optin_queue
from stripesync.segments import automation as segment_automation
from stripesync.segments import endpoints as segment_endpoints
from stripesync.sync.queue import use_queue as use_sync_queue
from stripesync.webhooks import endpoints as webhook_endpoints
from stripesync.webhooks.dispatch import load_handlers
from stripesync.webhooks.service import Enqueuer, EventInbox

ROUTERS = (
    activity_endpoints.router,
    account_endpoints.router,
    account_endpoints.callback_router,
    webhook_endpoints.router,
    ops_endpoints.router,
    import_endpoints.router,
    import_endpoints.resync_router,
    segment_endpoints.router,
    optin_endpoints.router,
    optin_pages.router,
    health.router,
)

MAX_BODY_BYTES = 1024 * 1024


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.require(*SERVE_REQUIRES)
        segment_automation.configure(settings)
        assert settings.redis_url is not None
        engine = create_engine(settings, pool_size=20)
        redis = create_redis(settings.redis_url)
        inbox = EventInbox(engine)
        inbox.start()
        enqueuer = Enqueuer(redis)
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as http:
            app.state.engine = engine
            app.state.session_factory = create_session_factory(engine)
            app.state.redis = redis
            app.state.inbox = inbox
            app.state.enqueuer = enqueuer
            app.state.http = http
            use_optin_queue(redis)
            use_sync_queue(redis)
            try:
                yield
            finally:
                use_optin_queue(None)
                use_sync_queue(None)
                await inbox.stop()
                await enqueuer.drain()
                await redis.aclose()
                await engine.dispose()

    app = FastAPI(
        title="stripesync",
        version=__version__,
        summary="Stripe customers become permission-based marketing contacts.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    load_handlers()  # feature modules register hooks the API also runs (accounts.oauth)
    install_error_handlers(app)
    # Every route refuses bodies over 1 MiB with 413 (the webhook caps lower itself).
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    for router in ROUTERS:
        app.include_router(router)
    return app
