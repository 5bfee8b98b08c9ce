"""Real Postgres and Redis for every test.

The servers come from STRIPESYNC_TEST_DATABASE_URL / STRIPESYNC_TEST_REDIS_URL, else
embedded ones this session starts under var/test/. Each test session creates its own
database (migrated once with alembic) and takes a Redis db number of its own, so several
sessions can share one server. Each test starts from empty tables and an empty Redis db.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import redis as redis_sync
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from stripesync.app import create_app
from stripesync.config import Settings, to_asyncpg_url
from stripesync.db import SessionFactory, create_engine, create_session_factory
from stripesync.models import Base

ROOT = Path(__file__).resolve().parents[1]
TEST_VAR = ROOT / "var" / "test"

WEBHOOK_SECRET = "whsec_test_primary"
OLD_WEBHOOK_SECRET = "whsec_test_rotated_out"
PLATFORM_TOKEN = "platform-token-for-tests"
OPS_TOKEN = "ops-token-for-tests"
ENCRYPTION_KEY = Fernet.generate_key().decode()


def _asyncpg_dsn(url: str) -> str:
    return "postgresql://" + to_asyncpg_url(url).split("://", 1)[1]


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(to_asyncpg_url(url)).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(postgres URL of a maintenance db, redis URL) of the servers the suite uses."""
    from stripesync.embedded import EmbeddedRedis, start_postgres

    pg_url = os.environ.get("STRIPESYNC_TEST_DATABASE_URL")
    redis_url = os.environ.get("STRIPESYNC_TEST_REDIS_URL")
    embedded_redis = None
    if not pg_url:
        pg_url = start_postgres(TEST_VAR / "postgres")
    if not redis_url:
        embedded_redis = EmbeddedRedis(TEST_VAR / f"redis-{os.getpid()}").start()
        redis_url = embedded_redis.url
    yield pg_url, redis_url
    if embedded_redis is not None:
        embedded_redis.stop()


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this session's own, migrated to head with alembic."""
    from stripesync.cli import migrate

    admin_url = server_urls[0]
    name = f"stripesync_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_asyncpg_dsn(admin_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = _with_database(admin_url, name)
    migrate(url)
    yield url
    asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A Redis db number no other running test session holds (claimed with SET NX)."""
    base = server_urls[1]
    client = redis_sync.Redis.from_url(base)
    claim_key = None
    for db in range(1, 16):
        key = f"stripesync:test-db-claim:{db}"
        if client.set(key, os.getpid(), nx=True, ex=3600):
            claim_key = key
            break
    if claim_key is None:
        pytest.fail("no free Redis db number for this test session")
    db_number = int(claim_key.rsplit(":", 1)[1])
    parts = urlsplit(base)
    if parts.scheme == "unix":
        url = f"{base.split('?', 1)[0]}?db={db_number}"
    else:
        url = urlunsplit(parts._replace(path=f"/{db_number}"))
    yield url
    redis_sync.Redis.from_url(url).flushdb()
    client.delete(claim_key)


def make_settings(database_url: str, redis_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "data_dir": TEST_VAR / "data",
        "platform_api_token": PLATFORM_TOKEN,
        "ops_api_token": OPS_TOKEN,
        "encryption_keys": ENCRYPTION_KEY,
        "stripe_webhook_secrets": f"{WEBHOOK_SECRET},{OLD_WEBHOOK_SECRET}",
        "stripe_client_id": "ca_test_client",
        "stripe_secret_key": "sk_test_platform",
        "stripe_api_base": "https://api.stripe.test",
        "cc_api_base": "https://api.cc.test",
        "cc_client_id": "cc-client",
        "cc_client_secret": "cc-secret",
        "public_base_url": "http://testserver",
        "log_format": "console",
        "event_retry_base_seconds": 0.01,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


@pytest.fixture(scope="session")
async def engine(database_url: str, redis_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(make_settings(database_url, redis_url), pool_size=5)
    yield eng
    await eng.dispose()


@pytest.fixture
def session_factory(engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(engine)


@pytest.fixture(autouse=True)
async def _clean_state(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every test that touches the database or Redis starts from empty ones."""
    yield
    if "engine" in request.fixturenames:
        eng: AsyncEngine = request.getfixturevalue("engine")
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        async with eng.begin() as conn:
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    if "redis_url" in request.fixturenames:
        redis_sync.Redis.from_url(request.getfixturevalue("redis_url")).flushdb()


@pytest.fixture
async def app_client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The real app with its lifespan, called in-process over ASGI."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            client.app = app  # type: ignore[attr-defined]
            yield client


@pytest.fixture
async def worker_ctx(
    settings: Settings, session_factory: SessionFactory, redis_url: str
) -> AsyncIterator[dict[str, Any]]:
    """The context arq hands each job, built as the worker builds it."""
    from stripesync.kit.queue import create_redis

    redis = create_redis(redis_url)
    async with httpx.AsyncClient() as http:
        yield {
            "settings": settings,
            "session_factory": session_factory,
            "redis": redis,
            "http": http,
            "job_try": 1,
        }
    await redis.aclose()


async def run_worker_burst(settings: Settings) -> None:
    """Run the real arq worker until the queue is empty."""
    from stripesync.worker import create_worker

    worker = create_worker(settings, burst=True, poll_delay=0.05)
    try:
        await worker.main()
    finally:
        await worker.close()


platform_headers = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
ops_headers = {"Authorization": f"Bearer {OPS_TOKEN}"}
