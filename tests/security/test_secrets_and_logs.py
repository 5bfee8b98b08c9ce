"""A flow that touches contacts end to end (connect, opt-in email over SMTP, confirmation,
payments, sync to the platform, unsubscribe, erasure), then: no token and no email address
in clear in any log line (structlog and stdlib, DEBUG), and no token in clear in a
`pg_dump` of the database, where opt-in link tokens exist only as their SHA-256.

tests/accounts/test_secrets_at_rest.py covers the connect flow's tokens (tables, logs,
Redis) and key rotation; this adds opt-in tokens, the contact flow's emails and a real
dump.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import httpx
import pytest
import respx
import structlog

from stripesync.config import Settings
from stripesync.kit.logging import quiet_libraries
from stripesync.webhooks.tasks import process_event
from tests.conftest import (
    ENCRYPTION_KEY,
    OPS_TOKEN,
    PLATFORM_TOKEN,
    WEBHOOK_SECRET,
    make_settings,
    platform_headers,
    run_worker_burst,
)
from tests.fakes.constant_contact import TOKEN_PATH, FakeConstantContact
from tests.optin.conftest import SmtpCapture, confirm_link
from tests.security.seed import deliver_signed, fake_stripe_oauth, seed_account
from tests.support import stripe_event

EMAIL_RE = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
ACCOUNT = "acc_logs"
QUIETED = ("httpx", "sqlalchemy", "arq", "aiosmtplib")


@pytest.fixture
def fake_cc() -> Iterator[FakeConstantContact]:
    with FakeConstantContact(
        requests_per_second=1000, processing_after=0.01, completed_after=0.05
    ) as fake:
        yield fake


@pytest.fixture
def settings(
    database_url: str,
    redis_url: str,
    smtp: tuple[SmtpCapture, str],
    fake_cc: FakeConstantContact,
    tmp_path: Any,
) -> Settings:
    """Every outside party of the flow: SMTP (aiosmtpd), the platform (fake Constant
    Contact), Stripe (respx, below)."""
    return make_settings(
        database_url,
        redis_url,
        data_dir=tmp_path,
        smtp_url=smtp[1],
        mail_from="optin@stripesync.test",
        mail_per_second=1000,
        mail_retry_base_seconds=0.05,
        cc_api_base=fake_cc.url,
        cc_token_url=fake_cc.url + TOKEN_PATH,
        cc_requests_per_second=500,
        log_format="json",
    )


@pytest.fixture
def outside() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        router.route(host="127.0.0.1").pass_through()  # the fake platform
        fake_stripe_oauth(router)
        empty = {"object": "list", "data": [], "has_more": False}
        router.get(url__startswith="https://api.stripe.test/v1/").respond(200, json=empty)
        yield router


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """Every log line of the test so far, structlog (rendered, exceptions formatted) and
    stdlib, at DEBUG, with the library levels production sets (kit/logging.quiet_libraries)."""
    caplog.set_level(logging.DEBUG)
    saved = {name: logging.getLogger(name).level for name in QUIETED}
    quiet_libraries()
    render = structlog.processors.JSONRenderer(default=repr)
    with structlog.testing.capture_logs(
        processors=[structlog.processors.add_log_level, structlog.processors.format_exc_info]
    ) as events:

        def collect() -> str:
            lines = [str(render(None, "", dict(e))) for e in events]
            # The fake SMTP server (aiosmtpd, "mail.log") is the outside world, not us.
            lines += [
                caplog.handler.format(r) for r in caplog.records if not r.name.startswith("mail.")
            ]
            return "\n".join(lines)

        yield collect
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)


def pg_dump(settings: Settings) -> str:
    """A data dump by the real pg_dump: the machine's, else the one pgserver ships (a
    runtime dependency), whichever can dump this server's version."""
    import pgserver

    bundled = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_dump"
    candidates = [c for c in (shutil.which("pg_dump"), str(bundled)) if c and Path(c).exists()]
    assert settings.database_url
    url = settings.database_url.replace("postgresql+asyncpg://", "postgresql://")
    errors = []
    for binary in candidates:
        done = subprocess.run(
            [binary, "--data-only", "--no-owner", url], capture_output=True, text=True, timeout=120
        )
        if done.returncode == 0:
            return done.stdout
        errors.append(done.stderr)
    raise AssertionError(f"no pg_dump could dump the test database: {errors}")


async def test_no_token_or_email_in_logs_and_no_token_in_a_database_dump(
    app_client: httpx.AsyncClient,
    worker_ctx: dict[str, Any],
    settings: Settings,
    smtp: tuple[SmtpCapture, str],
    fake_cc: FakeConstantContact,
    outside: respx.MockRouter,
    all_logs: Callable[[], str],
) -> None:
    seeded = await seed_account(app_client, worker_ctx, ACCOUNT)
    await run_worker_burst(settings)  # import (empty), opt-in email, platform sync
    smtp[0].wait_for(1)
    link = confirm_link(smtp[0].messages[0])
    token = urlsplit(link).path.removeprefix("/optin/")
    confirmed = await app_client.post(
        f"/optin/{token}/confirm", headers={"User-Agent": "Mozilla/5.0 (scan)"}
    )
    assert confirmed.status_code == 200
    charge = stripe_event(
        "charge.succeeded",
        {
            "id": "ch_logs_1",
            "object": "charge",
            "customer": f"cus_{ACCOUNT}",
            "amount": 2500,
            "amount_refunded": 0,
            "currency": "usd",
            "status": "succeeded",
            "paid": True,
            "captured": True,
            "refunded": False,
            "created": int(time.time()) - 60,
            "livemode": False,
            "billing_details": {"email": seeded.email, "name": "Some Buyer", "address": None},
            "receipt_email": seeded.email,
            "payment_intent": None,
            "invoice": None,
            "metadata": {},
        },
        account=seeded.stripe_account,
    )
    await deliver_signed(app_client, charge)
    assert await process_event(worker_ctx, charge["id"]) == "processed"
    await run_worker_burst(settings)
    assert fake_cc.contact(seeded.email) is not None  # the flow reached the platform
    base = f"/v1/accounts/{ACCOUNT}/contacts"
    h = platform_headers
    contact = await app_client.get(base, params={"email": seeded.email.upper()}, headers=h)
    assert contact.json()["consent"]["state"] == "confirmed"
    extra = "Person.Two+tag@Example.COM"
    assert (
        await app_client.post(f"{base}/unsubscribed", json={"email": extra}, headers=h)
    ).status_code == 204
    dump = pg_dump(settings)
    assert (
        await app_client.delete(base, params={"email": seeded.email}, headers=h)
    ).status_code == 204
    assert (
        await app_client.get(base, params={"email": "nobody@nowhere.example"}, headers=h)
    ).status_code == 404
    await run_worker_burst(settings)

    # The dump: the connection and contact are there, no secret is, the token only hashed.
    assert seeded.stripe_account in dump and seeded.email in dump
    secrets = {
        **{f"stored secret {i}": s for i, s in enumerate(seeded.secrets)},
        "opt-in token": token,
        "webhook secret": WEBHOOK_SECRET,
        "platform token": PLATFORM_TOKEN,
        "ops token": OPS_TOKEN,
        "encryption key": ENCRYPTION_KEY,
    }
    for name, secret in secrets.items():
        assert secret not in dump, f"{name} in clear in the database dump"
    assert hashlib.sha256(token.encode()).hexdigest() in dump

    logs = all_logs()
    assert "stripe_connected" in logs and "optin" in logs  # the capture works
    for name, secret in secrets.items():
        assert secret not in logs, f"{name} in clear in the logs"
    decoded = unquote_plus(logs).lower()  # URLs carry `?email=buyer%40...`
    for email in (seeded.email, seeded.unsubscribed_email, extra, f"owner@{ACCOUNT}.example"):
        assert email.lower() not in decoded, f"{email} in the logs"
    leaked = sorted(set(EMAIL_RE.findall(logs + "\n" + unquote_plus(logs))))
    assert leaked == [], f"email addresses in the logs: {leaked}"


async def test_database_errors_never_carry_statement_parameters(settings: Settings) -> None:
    # Unexpected errors are logged with their traceback; the message must not hold the
    # values of the statement (emails, ciphertexts).
    from sqlalchemy import text as sql
    from sqlalchemy.exc import DBAPIError

    from stripesync.db import create_engine

    engine = create_engine(settings, pool_size=1)
    try:
        async with engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                statement = sql("SELECT CAST(:value AS text), 1 / 0")  # fails on the server
                await conn.execute(statement, {"value": "x@leak.example"})
    finally:
        await engine.dispose()
    assert "x@leak.example" not in str(caught.value)
    assert "parameters hidden" in str(caught.value)
