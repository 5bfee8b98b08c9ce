"""The historical import end to end, in process: every list read through the list
endpoints, applied through the activity functions, counted, and reported once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from stripesync.activity import repository as activity_repository
from stripesync.activity.context import ActivityContext
from stripesync.db import transaction
from stripesync.imports import repository as imports_repository
from stripesync.imports import runner
from stripesync.imports.runner import Deps, ImportRun, run_job
from stripesync.imports.tasks import import_history, sweep_imports
from stripesync.kit.clock import utcnow
from stripesync.models import (
    CheckoutSession,
    Contact,
    ContactSegment,
    ImportTouched,
    OptinEmail,
    Payment,
    StripeConnection,
    StripeCustomer,
    Subscription,
)
from stripesync.segments.membership import recompute_segments
from tests.fakes.stripe import FakeStripe, History, customer_email

from .conftest import ACCOUNT, OWNER, Env, now_history


def expected_skips(n: int) -> dict[str, int]:
    emails = [customer_email(i) for i in range(n)]
    return {
        "no_email": sum(e is None for e in emails),
        "invalid_email": sum(e == "not-an-address" for e in emails),
    }


async def test_direct_import_reads_every_list_once_and_reports(
    env: Env, job_ctx: dict[str, Any], fake_stripe: FakeStripe, history: History
) -> None:
    _, job_id = await env.connect(mode="direct")

    outcome = await import_history(job_ctx, ACCOUNT)

    assert outcome == {job_id: "succeeded"}
    assert await env.count(StripeCustomer) == history.customers
    assert await env.count(Payment) == history.charges
    assert await env.count(CheckoutSession) == history.checkout_sessions
    assert await env.count(Subscription) == history.subscriptions
    job = await env.job(job_id)
    assert job.state == "succeeded" and job.finished_at is not None
    total = history.customers + history.charges + history.checkout_sessions + history.subscriptions
    assert job.progress == {"phase": "done", "done": total, "total": total}
    report = job.report
    assert report["imported"] == {
        "customers": history.customers,
        "charges": history.charges,
        "checkout_sessions": history.checkout_sessions,
        "subscriptions": history.subscriptions,
    }
    skips = expected_skips(history.customers)
    assert report["skipped"]["no_email"] >= skips["no_email"]
    assert report["skipped"]["invalid_email"] == skips["invalid_email"]
    assert report["contacts_created"] == await env.count(Contact)
    # Only list endpoints, never the Search API; every request paged at limit=100.
    assert set(fake_stripe.stats.by_path) <= {
        "/v1/customers",
        "/v1/charges",
        "/v1/checkout/sessions",
        "/v1/subscriptions",
    }
    assert report["stripe_requests"] == fake_stripe.stats.requests
    # The completion email went to the owner, once, with text and HTML parts.
    mails = env.outbox()
    assert len(mails) == 1
    assert mails[0]["To"] == OWNER
    text = mails[0].get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
    html = mails[0].get_body(preferencelist=("html",)).get_content()  # type: ignore[union-attr]
    assert f"New contacts:             {report['contacts_created']}" in text
    assert f"<strong>{total}</strong>" in html
    await sweep_imports(job_ctx)
    assert len(env.outbox()) == 1


@pytest.mark.parametrize(
    "history", [now_history(customers=60, charges=240, checkout_sessions=6, subscriptions=6)]
)
async def test_optin_import_reads_recent_customers_and_recent_payers_once(
    env: Env, job_ctx: dict[str, Any], fake_stripe: FakeStripe, history: History
) -> None:
    _, job_id = await env.connect(mode="optin")

    assert await import_history(job_ctx, ACCOUNT) == {job_id: "succeeded"}

    cutoff = history.end - 183 * 86_400
    recent = {i for i in range(history.customers) if history.created("customers", i) >= cutoff}
    payers = {
        j % history.customers
        for j in range(history.charges)
        if j % 10 != 9 and history.created("charges", j) >= cutoff
    }
    stored = await env.count(StripeCustomer)
    assert stored == len(recent | payers) < history.customers
    assert fake_stripe.stats.by_path["/v1/customers"] < 10
    assert await env.count(Payment) == history.charges
    job = await env.job(job_id)
    assert job.report["recent_payers_fetched"] == len(payers - recent)
    # One opt-in email per eligible person, requested through the opt-in hook.
    optin_rows = await env.count(OptinEmail)
    assert optin_rows > 0
    assert job.report["optin_emails"] == optin_rows


async def test_every_contact_an_import_touched_is_finished_once_the_lists_are_read(
    env: Env, job_ctx: dict[str, Any], history: History
) -> None:
    """The pages leave their contacts' finish owed; after the run nothing is owed, and every
    contact's activity and segments are what a full recompute from the stored rows gives."""
    connection_id, job_id = await env.connect(mode="direct")

    assert await import_history(job_ctx, ACCOUNT) == {job_id: "succeeded"}

    assert await env.count(ImportTouched) == 0
    await assert_activity_is_fresh(env, connection_id)
    async with transaction(env.factory) as session:
        with_purchases = await session.scalar(
            select(func.count()).select_from(Contact).where(Contact.purchase_count > 0)
        )
        assert with_purchases
        # Recomputing every segment from scratch finds nothing to change either.
        again = await recompute_segments(session, ACCOUNT, now=utcnow(), automation=False)
        assert again.contacts_changed == again.entered == again.exited == 0
        assert await session.scalar(select(func.count()).select_from(ContactSegment)) > 0


async def test_the_run_counts_each_contact_its_finishers_finish(
    env: Env, job_ctx: dict[str, Any], history: History, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several finishers at once, many small batches each: the turn's count of contacts
    finished is every contact owed a finish, none lost between finishers."""
    monkeypatch.setattr(runner, "FINISH_BATCH", 3)
    _, job_id = await env.connect(mode="direct")
    deps = Deps(job_ctx["session_factory"], job_ctx["http"], job_ctx["redis"], env.settings)
    async with transaction(env.factory) as session:
        job = await imports_repository.claim(session, job_id, "turn", timedelta(seconds=60))
        assert job is not None and job.connection_id is not None
        connection = await session.get(StripeConnection, job.connection_id)
        assert connection is not None
    run = ImportRun(deps, job, connection, "turn")
    await run.run()
    assert run.contacts_finished == await env.count(Contact) > 3 * len(run.queues)


async def test_the_sweeper_finishes_what_a_cancelled_import_touched(
    env: Env, job_ctx: dict[str, Any], history: History
) -> None:
    """An import cancelled part-way leaves contacts it touched unfinished; the sweeper
    finishes them, so their activity is what the stored rows say."""
    connection_id, job_id = await env.connect(mode="direct")
    deps = Deps(job_ctx["session_factory"], job_ctx["http"], job_ctx["redis"], env.settings)
    assert await run_job(deps, job_id, stop_at=0.0) == "paused"  # after its first pages
    assert await env.count(ImportTouched) > 0
    async with transaction(env.factory) as session:
        assert await imports_repository.cancel_active_imports(session, connection_id)

    assert (await sweep_imports(job_ctx))["contacts_finished"] > 0

    assert await env.count(ImportTouched) == 0
    await assert_activity_is_fresh(env, connection_id)


async def test_the_finish_debt_keeps_each_contact_once_and_any_change(env: Env) -> None:
    """A contact touched by several pages is owed one finish, `changed` if any page changed
    it; the debt is taken in id order from a cursor, each row once."""
    _, job_id = await env.connect(mode="direct")
    async with transaction(env.factory) as session:
        await imports_repository.note_touched(session, job_id, {1, 2, 3}, set())
        await imports_repository.note_touched(session, job_id, {2, 3, 4}, {3, 4})
        await imports_repository.note_touched(session, job_id, {3}, set())  # stays changed
    async with transaction(env.factory) as session:
        assert await imports_repository.touched_span(session, job_id, 0, 2) == (1, 2)
        assert await imports_repository.touched_span(session, job_id, 2, 10) == (3, 4)
        first = await imports_repository.take_touched(session, job_id, 2)
        third = await imports_repository.take_touched(session, job_id, 10, after=2, upto=3)
        rest = await imports_repository.take_touched(session, job_id, 10, after=2)
        assert await imports_repository.take_touched(session, job_id, 10, after=4) == (set(), set())
        assert await imports_repository.touched_span(session, job_id, 0, 10) is None
    assert first == ({1, 2}, set())
    assert third == ({3}, {3})
    assert rest == ({4}, {4})
    assert await env.count(ImportTouched) == 0


async def assert_activity_is_fresh(env: Env, connection_id: int) -> None:
    """Recomputing the account's contacts from the stored rows changes no one: every
    contact an import touched was refreshed."""
    async with transaction(env.factory) as session:
        connection = await session.get(StripeConnection, connection_id)
        assert connection is not None
        ctx = ActivityContext.for_connection(connection, utcnow())
        ids = set((await session.scalars(select(Contact.id))).all())
        assert ids
        assert await activity_repository.refresh_activity(session, ctx, ids) == set()
