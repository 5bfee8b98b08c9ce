"""The real app served by uvicorn on 127.0.0.1 (a thread of this process), and an account
seeded through it with something behind every kind of id the API takes."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import respx
import uvicorn
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.app import create_app
from stripesync.config import Settings
from stripesync.db import create_engine, create_session_factory
from stripesync.kit.queue import create_redis
from tests.conftest import make_settings
from tests.security.seed import Seeded, fake_stripe_oauth, seed_account

ACCOUNT_ID = "acc_fuzz"


class LiveServer:
    """uvicorn serving the app on an ephemeral port, in a thread with its own event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto says
        # TCP, and without it every answer waits ~40 ms for a delayed ACK.
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        # The asyncio loop, not uvloop: uvloop in a second thread next to other event loops
        # crashed the interpreter here.
        config = uvicorn.Config(
            create_app(settings), log_level="warning", lifespan="on", loop="asyncio"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


@pytest.fixture(scope="module")
def outside_world() -> Iterator[respx.MockRouter]:
    """Stripe's OAuth endpoints answer; any other outside HTTP call fails loudly; calls to
    the live server pass through."""
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host="127.0.0.1").pass_through()
        fake_stripe_oauth(router)
        yield router


@pytest.fixture(scope="module")
def live_server(
    database_url: str, redis_url: str, outside_world: respx.MockRouter
) -> Iterator[LiveServer]:
    with LiveServer(make_settings(database_url, redis_url)) as server:
        yield server


async def _seed(server: LiveServer, account_id: str) -> Seeded:
    settings = server.settings
    assert settings.redis_url
    engine = create_engine(settings, pool_size=2)
    redis = create_redis(settings.redis_url)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            ctx = {
                "settings": settings,
                "session_factory": create_session_factory(engine),
                "redis": redis,
                "http": client,
                "job_try": 1,
            }
            return await seed_account(client, ctx, account_id)
    finally:
        await redis.aclose()
        await engine.dispose()


def seed_live(server: LiveServer, account_id: str = ACCOUNT_ID) -> Seeded:
    """Seed from synchronous code: its own event loop, in a thread of its own."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, _seed(server, account_id)).result()


@pytest.fixture
def seeded(live_server: LiveServer, engine: AsyncEngine) -> Seeded:
    """Seeded afresh for each test; `engine` makes the suite empty the tables after it."""
    return seed_live(live_server)
