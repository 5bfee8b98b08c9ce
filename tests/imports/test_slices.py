"""An import that runs out of its slice's time pauses between pages and goes on in a
follow-up job: it ends exactly where one uninterrupted run ends, and a pause is no attempt."""

from __future__ import annotations

from typing import Any

import pytest
from arq.constants import default_queue_name

from stripesync.accounts.oauth import IMPORT_HISTORY
from stripesync.imports.runner import Deps, run_job
from stripesync.imports.tasks import import_history
from stripesync.kit.slices import enqueue_follow_up, follow_up
from stripesync.models import OptinEmail, Payment, StripeCustomer
from tests.fakes.stripe import FakeStripe, History

from .conftest import ACCOUNT, Env, contact_picture, now_history

HISTORY = now_history(customers=150, charges=450, checkout_sessions=10, subscriptions=10)


def _deps(ctx: dict[str, Any]) -> Deps:
    return Deps(ctx["session_factory"], ctx["http"], ctx["redis"], ctx["settings"])


@pytest.mark.parametrize("history", [HISTORY])
async def test_an_import_paused_after_every_page_ends_as_one_uninterrupted_run(
    env: Env, job_ctx: dict[str, Any], history: History
) -> None:
    _, sliced = await env.connect("acc_sliced", "acct_s", mode="optin", from_email="s@a.example")
    _, whole = await env.connect("acc_whole", "acct_w", mode="optin", from_email="w@a.example")

    # A deadline already past: every turn stops after its first page (or payers batch).
    turns = 0
    while (outcome := await run_job(_deps(job_ctx), sliced, stop_at=0.0)) == "paused":
        turns += 1
        paused = await env.job(sliced)
        # Resumable at once by anyone, and the pause cost no attempt.
        assert paused.state == "running" and paused.lease_token is None
        assert paused.attempts == 0
        assert turns < 200
    assert outcome == "succeeded"
    assert turns >= 3  # it really stopped part-way, several times
    assert await import_history(job_ctx, "acc_whole") == {whole: "succeeded"}

    a, b = await env.job(sliced), await env.job(whole)
    assert a.attempts == b.attempts == 1
    assert a.report["imported"] == b.report["imported"]
    assert a.report["skipped"] == b.report["skipped"]
    assert a.report["contacts_created"] == b.report["contacts_created"] > 0
    assert a.report["recent_payers_fetched"] == b.report["recent_payers_fetched"]
    assert a.progress == b.progress
    assert await contact_picture(env, "acc_sliced") == await contact_picture(env, "acc_whole")
    for model in (Payment, StripeCustomer, OptinEmail):
        assert (
            await env.count(model, account_id="acc_sliced")
            == await env.count(model, account_id="acc_whole")
            > 0
        )


@pytest.mark.parametrize("history", [HISTORY])
async def test_import_job_out_of_time_asks_for_a_follow_up_that_finishes_it(
    env: Env, job_ctx: dict[str, Any], fake_stripe: FakeStripe
) -> None:
    _, job_id = await env.connect(mode="direct")
    # A 1 s slice, and no Stripe page comes back sooner: the first page applied is late.
    fake_stripe.latency = 1.0
    ctx = {**job_ctx, "settings": env.settings.model_copy(update={"job_timeout_seconds": 2})}

    assert await import_history(ctx, ACCOUNT) == {job_id: "paused"}
    assert follow_up(ctx) == (IMPORT_HISTORY, (ACCOUNT,), None)
    # The worker's hook enqueues it under the finished job's own id.
    ctx["job_id"] = f"import_history:{ACCOUNT}"
    await enqueue_follow_up(ctx)
    assert follow_up(ctx) is None
    queued = await ctx["redis"].zrange(default_queue_name, 0, -1)
    assert queued == [f"import_history:{ACCOUNT}".encode()]

    fake_stripe.latency = 0.0
    for _ in range(20):  # the follow-ups (one, unless the machine is very slow)
        turn = {**ctx}
        outcome = await import_history(turn, ACCOUNT)
        if outcome == {job_id: "succeeded"}:
            assert follow_up(turn) is None
            break
        assert outcome == {job_id: "paused"} and follow_up(turn) is not None
    job = await env.job(job_id)
    assert job.state == "succeeded" and job.attempts == 1
    assert await env.count(Payment) == HISTORY.charges
    assert len(env.outbox()) == 1  # one completion email, however many turns
