"""Disconnecting Stripe while its import runs: the job ends cancelled, part-way."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from stripesync.imports.tasks import import_history
from stripesync.models import Payment
from tests.conftest import platform_headers
from tests.fakes.stripe import FakeStripe, History

from .conftest import ACCOUNT, OWNER, Env


@pytest.fixture
def fake_stripe() -> FakeStripe:
    # Slow answers keep the import running while the test disconnects (pages apply fast).
    return FakeStripe(History(customers=400, charges=1200), latency=0.3)


async def test_disconnect_cancels_a_running_import_between_pages(
    env: Env, job_ctx: dict[str, Any], app_client: httpx.AsyncClient
) -> None:
    _, job_id = await env.connect()
    running = asyncio.create_task(import_history(job_ctx, ACCOUNT))

    async def started() -> bool:
        job = await env.job(job_id)
        return bool(job.progress.get("done"))

    for _ in range(300):
        if await started():
            break
        await asyncio.sleep(0.1)
    await app_client.put(
        f"/v1/accounts/{ACCOUNT}",
        json={"name": "Blue Fern", "owner_email": OWNER},
        headers=platform_headers,
    )
    answer = await app_client.delete(f"/v1/accounts/{ACCOUNT}/stripe", headers=platform_headers)
    assert answer.status_code == 204
    outcome = await asyncio.wait_for(running, 60)

    assert outcome == {job_id: "cancelled"}
    job = await env.job(job_id)
    assert job.state == "cancelled" and job.finished_at is not None
    assert await env.count(Payment) < 1200  # it stopped part-way
    assert env.outbox() == []  # the merchant disconnected: no completion email
