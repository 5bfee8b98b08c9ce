"""Sending through a real SMTP server: transient failures retried, permanent ones recorded
once, the dev outbox, the throttle."""

from __future__ import annotations

import time
from email import message_from_bytes
from email.policy import default as default_policy
from typing import Any

from tests.conftest import make_settings, run_worker_burst
from tests.optin.conftest import (
    SmtpCapture,
    apply,
    connect,
    contact_of,
    customer,
    free_port,
    optin_rows,
    text_part,
)

from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.models import OptinEmailState
from stripesync.optin.tasks import sweep_optin_emails


async def test_transient_451_is_retried_and_then_sent(
    session_factory: SessionFactory, mail_settings: Settings, smtp: tuple[SmtpCapture, str]
) -> None:
    capture, _ = smtp
    capture.rcpt_replies = ["451 4.7.1 Greylisted, try again later"] * 2
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "ann@example.com"))

    await run_worker_burst(mail_settings)

    capture.wait_for(1)
    assert len(capture.messages) == 1
    assert capture.rcpt_attempts == 3
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.SENT
    assert row.attempts == 3
    assert row.last_error is None


async def test_permanent_550_is_recorded_once_without_retries(
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
    worker_ctx: dict[str, Any],
) -> None:
    capture, _ = smtp
    capture.rcpt_replies = ["550 5.1.1 No such user here"] * 5
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "nobody@example.com"))

    await run_worker_burst(mail_settings)
    await run_worker_burst(mail_settings)  # the sweeper runs again: still nothing to retry

    assert capture.rcpt_attempts == 1
    assert capture.messages == []
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.REJECTED
    assert row.last_error is not None and "550" in row.last_error
    assert row.token_hash is None and row.sent_at is None
    assert await sweep_optin_emails({**worker_ctx, "settings": mail_settings}) == 0
    # Never asked twice, and not counted as sent.
    assert (await contact_of(session_factory, "nobody@example.com")).consent_state == "pending"


async def test_unreachable_server_is_a_transient_failure_until_attempts_run_out(
    session_factory: SessionFactory, database_url: str, redis_url: str
) -> None:
    settings = make_settings(
        database_url,
        redis_url,
        smtp_url=f"smtp://127.0.0.1:{free_port()}",  # nothing listens there
        mail_retry_base_seconds=0.01,
        mail_max_attempts=3,
        mail_timeout_seconds=2,
    )
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "ann@example.com"))

    await run_worker_burst(settings)

    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.FAILED
    assert row.attempts == 3
    assert row.last_error is not None and "unreachable" in row.last_error


async def test_without_smtp_url_mail_lands_in_the_dev_outbox(
    session_factory: SessionFactory, database_url: str, redis_url: str, tmp_path: Any
) -> None:
    settings = make_settings(database_url, redis_url, data_dir=tmp_path, smtp_url=None)
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "ann@example.com"))

    await run_worker_burst(settings)

    [eml] = list((tmp_path / "outbox").glob("*.eml"))
    message = message_from_bytes(eml.read_bytes(), policy=default_policy)
    assert message["To"] == "ann@example.com"
    assert "Yes, keep me updated:" in text_part(message)  # type: ignore[arg-type]
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.SENT


async def test_sending_is_throttled_to_the_configured_rate(
    session_factory: SessionFactory,
    database_url: str,
    redis_url: str,
    smtp: tuple[SmtpCapture, str],
) -> None:
    capture, url = smtp
    settings = make_settings(database_url, redis_url, smtp_url=url, mail_per_second=2)
    ctx = await connect(session_factory)
    for n in range(5):
        await apply(session_factory, ctx, "customer", customer(f"cus_{n}", f"p{n}@example.com"))

    started = time.monotonic()
    await run_worker_burst(settings)
    elapsed = time.monotonic() - started

    capture.wait_for(5)
    assert len(capture.messages) == 5
    # 2 per second: the fifth email cannot leave before the third window opens.
    assert elapsed >= 2.0
