"""A send claimed by a worker that died before the mail server took it: released once no
live send job can still hold it (the job timeout + 10 s), then sent once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import update
from tests.conftest import run_worker_burst
from tests.optin.conftest import SmtpCapture, apply, connect, customer, optin_rows

from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.models import OptinEmail, OptinEmailState
from stripesync.optin.tasks import sweep_optin_emails


async def _claimed(factory: SessionFactory, seconds_ago: float) -> None:
    async with transaction(factory) as session:
        await session.execute(
            update(OptinEmail).values(
                state=OptinEmailState.SENDING, claimed_at=utcnow() - timedelta(seconds=seconds_ago)
            )
        )


async def test_a_dead_workers_claim_is_released_after_the_job_timeout_and_sent_once(
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
    worker_ctx: dict[str, Any],
) -> None:
    capture, _ = smtp
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "ann@example.com"))
    sweep_ctx = {**worker_ctx, "settings": mail_settings}
    timeout = mail_settings.job_timeout_seconds

    # Claimed as long ago as a send job may still be running: left alone.
    await _claimed(session_factory, timeout)
    assert await sweep_optin_emails(sweep_ctx) == 0
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.SENDING

    # Older than any live job's claim: the worker died mid-send.
    await _claimed(session_factory, timeout + 11)
    await run_worker_burst(mail_settings)  # its sweeper runs at startup

    capture.wait_for(1)
    assert [m["To"] for m in capture.messages] == ["ann@example.com"]
    [row] = await optin_rows(session_factory)
    assert row.state == OptinEmailState.SENT
