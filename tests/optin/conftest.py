"""Fixtures for opt-in tests: an account connected in a mode, Stripe objects applied through
the real activity path, and a real SMTP server (aiosmtpd) that captures what is sent."""

from __future__ import annotations

import copy
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import select
from tests.conftest import make_settings

import stripesync.optin.hooks  # noqa: F401 - registers the contacts hook, as the processes do
from stripesync.activity.context import ActivityContext
from stripesync.activity.service import apply_charge, apply_checkout_session, apply_customer
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.models import (
    Account,
    ConsentEvent,
    Contact,
    OptinEmail,
    OptinEmailSettings,
    StripeConnection,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "stripe"
ACCOUNT = "acc_optin"
STRIPE_ACCOUNT = "acct_optin_1"
MERCHANT = "Blue Fern Pottery"
POSTAL = "12 Kiln Lane, Portland OR 97201, USA"
DAY = 86_400


def stripe_object(fixture_name: str, /, **overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = copy.deepcopy(json.loads((FIXTURES / f"{fixture_name}.json").read_text()))
    obj.update(overrides)
    return obj


def now_ts() -> int:
    return int(utcnow().timestamp())


def customer(cid: str, email: str | None, *, age_days: float = 1) -> dict[str, Any]:
    """A Stripe customer created `age_days` ago (by the frozen clock when time is frozen)."""
    return stripe_object(
        "customer",
        id=cid,
        email=email,
        created=now_ts() - int(age_days * DAY),
        name=None,
        address=None,
    )


def charge(
    chid: str, *, customer_id: str | None, email: str | None, age_days: float
) -> dict[str, Any]:
    obj = stripe_object(
        "charge",
        id=chid,
        customer=customer_id,
        amount=2500,
        amount_captured=2500,
        amount_refunded=0,
        refunded=False,
        status="succeeded",
        paid=True,
        created=now_ts() - int(age_days * DAY),
        currency="usd",
        invoice=None,
        payment_intent=None,
    )
    obj["billing_details"] = {**obj["billing_details"], "email": email, "name": None}
    obj["billing_details"]["address"] = {**obj["billing_details"]["address"], "country": None}
    return obj


def checkout(csid: str, email: str, *, promotions: str | None) -> dict[str, Any]:
    obj = stripe_object(
        "checkout_session",
        id=csid,
        customer=None,
        created=now_ts() - 60,
        payment_intent=None,
    )
    obj["customer_details"] = {**(obj.get("customer_details") or {}), "email": email}
    obj["consent"] = {"promotions": promotions} if promotions else None
    return obj


async def connect(
    factory: SessionFactory,
    *,
    mode: str = "optin",
    account_id: str = ACCOUNT,
    activated: bool = True,
    intro: str | None = "We make mugs by hand in Portland.",
) -> ActivityContext:
    """An account with its opt-in email saved (and activated) and an active connection."""
    async with transaction(factory) as session:
        session.add(
            Account(
                id=account_id,
                name=MERCHANT,
                owner_email="owner@bluefern.example",
                postal_address=POSTAL,
            )
        )
        await session.flush()
        session.add(
            OptinEmailSettings(
                account_id=account_id,
                subject="Blue Fern Pottery: may we keep you updated?",
                from_name="Blue Fern Pottery",
                from_email="hello@bluefern.example",
                reply_to="owner@bluefern.example",
                intro=intro,
                activated_at=utcnow() if activated else None,
                updated_at=utcnow(),
            )
        )
        connection = StripeConnection(
            account_id=account_id, stripe_account_id=STRIPE_ACCOUNT, livemode=False, mode=mode
        )
        session.add(connection)
        await session.flush()
        return ActivityContext.for_connection(connection, utcnow())


async def apply(
    factory: SessionFactory, ctx: ActivityContext, kind: str, obj: dict[str, Any]
) -> None:
    """Apply one Stripe object the way a webhook or the import does (hooks run)."""
    fn = {"customer": apply_customer, "charge": apply_charge, "checkout": apply_checkout_session}[
        kind
    ]
    async with transaction(factory) as session:
        await fn(session, ctx, obj)


async def current_ctx(factory: SessionFactory, account_id: str = ACCOUNT) -> ActivityContext:
    """The context of the account's active connection, as the worker builds it."""
    async with factory() as session:
        connection = await session.scalar(
            select(StripeConnection).where(
                StripeConnection.account_id == account_id, StripeConnection.status == "connected"
            )
        )
        assert connection is not None
        return ActivityContext.for_connection(connection, utcnow())


async def optin_rows(factory: SessionFactory, account_id: str = ACCOUNT) -> list[OptinEmail]:
    async with factory() as session:
        rows = await session.scalars(
            select(OptinEmail).where(OptinEmail.account_id == account_id).order_by(OptinEmail.id)
        )
        return list(rows)


async def contact_of(factory: SessionFactory, email: str, account_id: str = ACCOUNT) -> Contact:
    async with factory() as session:
        found = await session.scalar(
            select(Contact).where(Contact.account_id == account_id, Contact.email == email)
        )
        assert found is not None, "no contact"
        return found


async def ledger(factory: SessionFactory, account_id: str = ACCOUNT) -> list[ConsentEvent]:
    async with factory() as session:
        rows = await session.scalars(
            select(ConsentEvent)
            .where(ConsentEvent.account_id == account_id)
            .order_by(ConsentEvent.id)
        )
        return list(rows)


# --- a real SMTP server ---------------------------------------------------------------------


@dataclass
class SmtpCapture:
    """What the server received, and replies to give the next RCPT commands."""

    messages: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    rcpt_replies: list[str] = field(default_factory=list)
    rcpt_attempts: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: Any
    ) -> str:
        self.rcpt_attempts += 1
        if self.rcpt_replies:
            return self.rcpt_replies.pop(0)
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        self.messages.append(parsed)
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"

    def wait_for(self, count: int, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[tuple[SmtpCapture, str]]:
    """(capture, smtp URL) of a local aiosmtpd server."""
    capture = SmtpCapture()
    port = free_port()
    controller = Controller(capture, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield capture, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


@pytest.fixture
def mail_settings(database_url: str, redis_url: str, smtp: tuple[SmtpCapture, str]) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        smtp_url=smtp[1],
        mail_from="optin@stripesync.test",
        mail_per_second=1000,
        mail_retry_base_seconds=0.05,
    )


def html_part(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def text_part(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def confirm_link(message: EmailMessage) -> str:
    """The "Yes, keep me updated" link of the text part."""
    lines = text_part(message).splitlines()
    return lines[lines.index("Yes, keep me updated:") + 1]
