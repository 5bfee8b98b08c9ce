"""Connecting Stripe creates the built-in segments and queues the sync that makes their
platform lists."""

from __future__ import annotations

from typing import Any

import httpx
import respx
from sqlalchemy import select

from stripesync.db import SessionFactory
from stripesync.models import Segment
from stripesync.sync.queue import sync_job_id
from stripesync.sync.tasks import sync_account_job
from tests.accounts.conftest import authorize, callback, put_account, redirect_params
from tests.accounts.conftest import stripe_oauth as stripe_oauth  # the fixture
from tests.fakes.constant_contact import FakeConstantContact


async def test_connect_creates_the_builtins_and_their_lists_come_with_the_queued_sync(
    app_client: httpx.AsyncClient,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
    sync_ctx: dict[str, Any],
    fake_cc: FakeConstantContact,
) -> None:
    stripe_oauth.route(host="127.0.0.1").pass_through()  # the fake platform is real HTTP
    creds = {"access_token": "a", "refresh_token": "r", "expires_at": "2099-01-01T00:00:00Z"}
    assert (await put_account(app_client, "acc_1", cc_credentials=creds)).status_code == 201
    state = await authorize(app_client, "acc_1", mode="direct", affirmed_by="user-42")

    _, params = redirect_params(await callback(app_client, code="ac_code", state=state))

    assert params["status"] == "connected"
    redis = app_client.app.state.redis  # type: ignore[attr-defined]
    assert sync_job_id("acc_1") in [j.job_id for j in await redis.queued_jobs()]
    async with session_factory() as session:
        names = set(await session.scalars(select(Segment.name)))
    assert len(names) == 9 and "Stripe - All Customers" in names

    await sync_account_job(sync_ctx, "acc_1")  # what the queued job runs

    assert {lst["name"] for lst in fake_cc.lists.values()} == names
    async with session_factory() as session:
        ids = list(await session.scalars(select(Segment.platform_list_id)))
    assert set(ids) == set(fake_cc.lists)
