"""Fixtures for import tests: a connected account, the fake Stripe (tests/fakes/stripe.py)
behind the job's HTTP client, and the worker context an import job runs in."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.imports.service import ensure_import_job
from stripesync.kit.queue import create_redis
from stripesync.models import Account, Job, OptinEmailSettings, StripeConnection
from stripesync.webhooks.dispatch import load_handlers
from tests.conftest import make_settings
from tests.fakes.stripe import FakeStripe, History

ACCOUNT = "acc_import"
STRIPE_ACCOUNT = "acct_import_1"
OWNER = "owner@bluefern.example"

load_handlers()  # the hooks every process registers: segments, opt-in, sync, imports


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path,  # the dev mail outbox of this test only
        stripe_import_test_requests_per_second=1000,
        import_concurrency=4,
        import_windows_per_list=3,
        import_lease_seconds=5,
        import_backoff_base_seconds=0.01,
    )


def now_history(**kwargs: Any) -> History:
    """A history ending now (so opt-in mode's 183 days cut through it)."""
    end = int(datetime.now(UTC).timestamp()) - 60
    return History(end=end, **kwargs)


class Env:
    """The world of one import test: the fake Stripe, and a job context that talks to it."""

    def __init__(self, settings: Settings, factory: SessionFactory, fake: FakeStripe) -> None:
        self.settings = settings
        self.factory = factory
        self.fake = fake

    async def connect(
        self,
        account_id: str = ACCOUNT,
        stripe_account: str = STRIPE_ACCOUNT,
        *,
        mode: str = "direct",
        livemode: bool = False,
        from_email: str = "hello@bluefern.example",
    ) -> tuple[int, str]:
        """An account with a connected Stripe account and its queued import job."""
        async with transaction(self.factory) as session:
            if await session.get(Account, account_id) is None:
                session.add(Account(id=account_id, name="Blue Fern Pottery", owner_email=OWNER))
                session.add(
                    OptinEmailSettings(
                        account_id=account_id,
                        subject="May we keep you updated?",
                        from_name="Blue Fern Pottery",
                        from_email=from_email,
                        reply_to=from_email,
                        activated_at=datetime.now(UTC),
                        updated_at=datetime.now(UTC),
                    )
                )
                await session.flush()
            connection = StripeConnection(
                account_id=account_id,
                stripe_account_id=stripe_account,
                livemode=livemode,
                mode=mode,
            )
            session.add(connection)
            await session.flush()
            job = await ensure_import_job(session, connection)
            return connection.id, job.id

    async def job(self, job_id: str) -> Job:
        async with transaction(self.factory) as session:
            job = await session.get(Job, job_id)
            assert job is not None
            return job

    async def count(self, model: Any, **where: Any) -> int:
        async with transaction(self.factory) as session:
            stmt = select(func.count()).select_from(model).filter_by(**where)
            return int((await session.execute(stmt)).scalar_one())

    def outbox(self) -> list[EmailMessage]:
        folder = Path(self.settings.data_dir) / "outbox"
        if not folder.exists():
            return []
        return [
            message_from_bytes(p.read_bytes(), policy=default_policy)  # type: ignore[misc]
            for p in sorted(folder.glob("*.eml"))
        ]


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def fake_stripe(history: History) -> FakeStripe:
    return FakeStripe(history)


@pytest.fixture
def env(settings: Settings, session_factory: SessionFactory, fake_stripe: FakeStripe) -> Env:
    return Env(settings, session_factory, fake_stripe)


@pytest.fixture
async def job_ctx(
    settings: Settings, session_factory: SessionFactory, redis_url: str, fake_stripe: FakeStripe
) -> AsyncIterator[dict[str, Any]]:
    """The context arq hands a job, with Stripe answered by the fake."""
    redis = create_redis(redis_url)
    transport = httpx.ASGITransport(app=fake_stripe)
    async with httpx.AsyncClient(transport=transport) as http:
        yield {
            "settings": settings,
            "session_factory": session_factory,
            "redis": redis,
            "http": http,
            "job_try": 1,
        }
    await redis.aclose()


async def contact_picture(env: Env, account_id: str) -> list[tuple[Any, ...]]:
    """What an import made of the account's people, comparable between two accounts."""
    async with transaction(env.factory) as session:
        rows = await session.execute(
            text(
                "SELECT email, consent_state, purchase_count, total_spent::text, "
                "first_purchase_at, last_purchase_at, subscription_status, customer_created_at "
                "FROM contacts WHERE account_id = :a ORDER BY email"
            ),
            {"a": account_id},
        )
        return [tuple(r) for r in rows]


Ctx = Callable[..., dict[str, Any]]
