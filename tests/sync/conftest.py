"""Fixtures of the sync tests: a fake platform per test, settings pointing at it (API and
OAuth token endpoint), a job context built as the worker builds it, and helpers that make an
account with platform credentials and contacts whose segments the real recompute fills."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

import stripesync.segments.hooks
import stripesync.sync.hooks  # noqa: F401  (registers the sync hook)
from stripesync.activity.hooks import contacts_changed
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.kit.queue import create_redis
from stripesync.models import Account, Contact
from stripesync.sync.queue import use_queue
from tests.conftest import make_settings
from tests.fakes.constant_contact import TOKEN_PATH, FakeConstantContact

ACCOUNT = "acc_sync"


@pytest.fixture
def fake_cc() -> Iterator[FakeConstantContact]:
    with FakeConstantContact(
        requests_per_second=1000, processing_after=0.01, completed_after=0.05
    ) as fake:
        yield fake


@pytest.fixture
def sync_settings(database_url: str, redis_url: str, fake_cc: FakeConstantContact) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        cc_api_base=fake_cc.url,
        cc_token_url=fake_cc.url + TOKEN_PATH,
        cc_requests_per_second=500,
    )


@pytest.fixture
async def sync_ctx(
    sync_settings: Settings,
    session_factory: SessionFactory,
    engine: AsyncEngine,
    redis_url: str,
) -> AsyncIterator[dict[str, Any]]:
    """The job context, with the sync queue configured as the worker configures it."""
    redis = create_redis(redis_url)
    use_queue(redis)
    async with httpx.AsyncClient() as http:
        yield {
            "settings": sync_settings,
            "session_factory": session_factory,
            "engine": engine,
            "redis": redis,
            "http": http,
            "job_try": 1,
        }
    use_queue(None)
    await redis.aclose()


async def make_account(
    factory: SessionFactory,
    settings: Settings,
    account_id: str = ACCOUNT,
    *,
    access_token: str = "tok-0",
    refresh_token: str = "rt-0",
    expires_in: timedelta = timedelta(hours=20),
) -> str:
    async with transaction(factory) as session:
        session.add(
            Account(
                id=account_id,
                name="Blue Fern",
                owner_email="owner@bluefern.example",
                cc_access_token_encrypted=crypto.encrypt(settings, access_token),
                cc_refresh_token_encrypted=crypto.encrypt(settings, refresh_token),
                cc_token_expires_at=utcnow() + expires_in,
            )
        )
    return account_id


async def add_contacts(
    factory: SessionFactory, account_id: str, people: dict[str, str], **fields: Any
) -> dict[str, int]:
    """Insert contacts (email → consent) and run the contacts-changed hooks on them, as an
    apply function would: segments recompute, and the account's sync is requested."""
    ids: dict[str, int] = {}
    async with transaction(factory) as session:
        for email, consent in people.items():
            contact = Contact(
                account_id=account_id,
                email=email,
                email_domain=email.split("@")[1],
                consent_state=consent,
                **fields,
            )
            session.add(contact)
            await session.flush()
            ids[email] = contact.id
        await contacts_changed(session, account_id, list(ids.values()))
    return ids


async def contacts_by_email(factory: SessionFactory, account_id: str) -> dict[str, Contact]:
    async with factory() as session:
        rows = await session.scalars(select(Contact).where(Contact.account_id == account_id))
        return {c.email: c for c in rows}


def push_calls(fake: FakeConstantContact) -> list[str]:
    """Paths of the calls that carry contacts (not list/field setup, not status polls)."""
    pushing = ("sign_up_form", "contacts_json_import", "list_memberships")
    return [r.path for r in fake.api_requests() if any(p in r.path for p in pushing)]
