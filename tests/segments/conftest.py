"""Fixtures of the segment tests: an account, contacts inserted with the activity a test
wants (segments read only the contacts table), and automation triggers switched on."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import time_machine
from sqlalchemy import select, text

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Contact, Segment
from stripesync.segments import automation
from tests.conftest import make_settings

ACCOUNT = "acc_seg"
NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
AUTOMATION_URL = "https://automation.example/hooks/stripesync"
AUTOMATION_SECRET = "whsec_" + base64.b64encode(b"automation-secret-for-tests-0123").decode()


@pytest.fixture
def frozen() -> Iterator[time_machine.Coordinates]:
    with time_machine.travel(NOW, tick=False) as traveller:
        yield traveller


@pytest.fixture
async def account(session_factory: SessionFactory) -> str:
    async with transaction(session_factory) as session:
        session.add(Account(id=ACCOUNT, name="Blue Fern", owner_email="owner@bluefern.example"))
    return ACCOUNT


_counter = 0


async def add_contact(factory: SessionFactory, account_id: str = ACCOUNT, **fields: Any) -> int:
    """Insert one contact with permission (unless told otherwise) and the given activity."""
    global _counter
    _counter += 1
    email = fields.pop("email", f"person{_counter}@bluefern.example")
    values: dict[str, Any] = {
        "account_id": account_id,
        "email": email,
        "email_domain": email.split("@", 1)[1],
        "consent_state": "confirmed",
    }
    values.update(fields)
    async with transaction(factory) as session:
        contact = Contact(**values)
        session.add(contact)
        await session.flush()
        return contact.id


async def set_activity(factory: SessionFactory, contact_id: int, **fields: Any) -> None:
    """Change a contact's activity the way the activity code does: fields and version."""
    async with transaction(factory) as session:
        contact = await session.get(Contact, contact_id)
        assert contact is not None
        for name, value in fields.items():
            setattr(contact, name, value)
        contact.version += 1


async def memberships(factory: SessionFactory, account_id: str = ACCOUNT) -> dict[str, set[int]]:
    """{segment key (or name for custom ones): contact ids}."""
    async with factory() as session:
        rows = await session.execute(
            text(
                "SELECT COALESCE(s.key, s.name), cs.contact_id FROM contact_segments cs"
                " JOIN segments s ON s.id = cs.segment_id WHERE s.account_id = :a"
            ),
            {"a": account_id},
        )
        found: dict[str, set[int]] = {}
        for key, contact_id in rows.all():
            found.setdefault(key, set()).add(contact_id)
        return found


async def versions(factory: SessionFactory) -> dict[int, int]:
    async with factory() as session:
        return dict((await session.execute(select(Contact.id, Contact.version))).all())  # type: ignore[arg-type]


async def counts(factory: SessionFactory, account_id: str = ACCOUNT) -> dict[str, int]:
    async with factory() as session:
        rows = await session.execute(
            select(Segment.key, Segment.name, Segment.member_count).where(
                Segment.account_id == account_id, Segment.deleted_at.is_(None)
            )
        )
        return {key or name: count for key, name, count in rows.all()}


@pytest.fixture
def automation_settings(database_url: str, redis_url: str) -> Iterator[Settings]:
    """Triggers on for this test (as the worker's startup does), off again afterwards."""
    settings = make_settings(
        database_url,
        redis_url,
        automation_webhook_url=AUTOMATION_URL,
        automation_webhook_secret=AUTOMATION_SECRET,
        automation_retry_base_seconds=30.0,
        automation_max_attempts=3,
    )
    automation.configure(settings)
    yield settings
    automation.configure(make_settings(database_url, redis_url))


@pytest.fixture(autouse=True)
def _automation_off(database_url: str, redis_url: str) -> Iterator[None]:
    automation.configure(make_settings(database_url, redis_url))
    yield
