"""The public pages: GET changes nothing; POST confirm/decline record the answer once;
forged, expired and erased tokens get friendly pages."""

from __future__ import annotations

from datetime import timedelta
from urllib.parse import urlsplit

import httpx
import pytest
import time_machine
from prometheus_client import REGISTRY
from sqlalchemy import select
from tests.conftest import platform_headers, run_worker_burst
from tests.optin.conftest import (
    ACCOUNT,
    MERCHANT,
    SmtpCapture,
    apply,
    charge,
    confirm_link,
    connect,
    contact_of,
    current_ctx,
    customer,
    ledger,
    optin_rows,
)

from stripesync.activity.contacts import erase
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.kit.clock import utcnow
from stripesync.models import Contact, OptinEmailVersion
from stripesync.optin.service import token_hash

EMAIL = "ann@example.com"
BROWSER = "Mozilla/5.0 (test browser)"


@pytest.fixture
async def token(
    session_factory: SessionFactory, mail_settings: Settings, smtp: tuple[SmtpCapture, str]
) -> str:
    """The token of the link in the email the person really received."""
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", EMAIL))
    await run_worker_burst(mail_settings)
    smtp[0].wait_for(1)
    path = urlsplit(confirm_link(smtp[0].messages[0])).path
    return path.removeprefix("/optin/")


async def test_get_shows_merchant_and_both_buttons_and_changes_nothing(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    before = await contact_of(session_factory, EMAIL)
    ledger_before = len(await ledger(session_factory))
    for url in (
        f"/optin/{token}?answer=yes",
        f"/optin/{token}?answer=no",
        f"/optin/{token}/decline",
    ):
        response = await app_client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        assert MERCHANT in response.text
        assert "Yes, keep me updated" in response.text and "No thanks" in response.text
        assert response.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in response.headers["content-security-policy"]

    after = await contact_of(session_factory, EMAIL)
    assert after.consent_state == "pending" and after.version == before.version
    assert len(await ledger(session_factory)) == ledger_before
    [row] = await optin_rows(session_factory)
    assert row.response is None


async def test_confirm_records_consent_with_evidence_and_repeats_are_harmless(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    before = await contact_of(session_factory, EMAIL)
    response = await app_client.post(f"/optin/{token}/confirm", headers={"User-Agent": BROWSER})
    assert response.status_code == 200
    assert "Thank you!" in response.text

    contact = await contact_of(session_factory, EMAIL)
    assert contact.consent_state == "confirmed"
    assert contact.version > before.version  # the sync engine pushes it
    entry = (await ledger(session_factory))[-1]
    assert (entry.state, entry.source) == ("confirmed", "optin_email")
    [row] = await optin_rows(session_factory)
    async with session_factory() as session:
        version = await session.get(OptinEmailVersion, row.version_id)
    assert version is not None
    assert entry.evidence["email_version_id"] == version.id
    assert entry.evidence["email_version_digest"] == version.digest
    assert entry.evidence["ip"] == "127.0.0.1"
    assert entry.evidence["user_agent"] == BROWSER
    assert entry.evidence["answered_at"]

    again = await app_client.post(f"/optin/{token}/confirm")
    assert again.status_code == 200 and "already on the list" in again.text
    no_after_yes = await app_client.post(f"/optin/{token}/decline")
    assert no_after_yes.status_code == 200
    assert (await contact_of(session_factory, EMAIL)).consent_state == "confirmed"
    assert [e.state for e in await ledger(session_factory)].count("confirmed") == 1
    page = await app_client.get(f"/optin/{token}")
    assert "already on the list" in page.text and "<form" not in page.text


async def test_decline_is_final_and_the_person_is_never_emailed_again(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    token: str,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    response = await app_client.post(
        f"/optin/{token}/decline",
        content=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and "No problem" in response.text
    assert (await contact_of(session_factory, EMAIL)).consent_state == "declined"

    yes_later = await app_client.post(f"/optin/{token}/confirm")
    assert yes_later.status_code == 200
    assert (await contact_of(session_factory, EMAIL)).consent_state == "declined"

    # They buy again; nothing is sent.
    main_ctx = await current_ctx(session_factory)
    await apply(
        session_factory,
        main_ctx,
        "charge",
        charge("ch_2", customer_id="cus_1", email=None, age_days=0),
    )
    await run_worker_burst(mail_settings)
    assert len(smtp[0].messages) == 1
    assert len(await optin_rows(session_factory)) == 1


async def test_forged_and_unknown_tokens_get_a_friendly_404_page(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")
    for method, url in (
        ("GET", f"/optin/{forged}"),
        ("POST", f"/optin/{forged}/confirm"),
        ("POST", f"/optin/{forged}/decline"),
        ("GET", "/optin/" + "x" * 43),
        ("POST", "/optin/" + "y" * 500 + "/confirm"),
    ):
        response = await app_client.request(method, url)
        assert response.status_code == 404, url
        assert response.headers["content-type"].startswith("text/html")
        assert "find this link" in response.text
        assert "Traceback" not in response.text
    assert (await contact_of(session_factory, EMAIL)).consent_state == "pending"


async def test_only_the_hash_of_the_token_is_stored(
    session_factory: SessionFactory, token: str
) -> None:
    [row] = await optin_rows(session_factory)
    assert row.token_hash == token_hash(token)
    assert token not in repr(row.__dict__)


async def test_expired_link_gets_a_410_page_and_records_nothing(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    with time_machine.travel(utcnow() + timedelta(days=30, minutes=1), tick=False):
        page = await app_client.get(f"/optin/{token}")
        post = await app_client.post(f"/optin/{token}/confirm")
    assert page.status_code == 410 and post.status_code == 410
    assert "expired" in post.text
    assert (await contact_of(session_factory, EMAIL)).consent_state == "pending"

    with time_machine.travel(utcnow() + timedelta(days=29), tick=False):
        assert (await app_client.post(f"/optin/{token}/confirm")).status_code == 200


async def test_erased_person_link_is_unknown(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    async with transaction(session_factory) as session:
        await erase(session, ACCOUNT, EMAIL)
    response = await app_client.post(f"/optin/{token}/confirm")
    assert response.status_code == 404
    async with session_factory() as session:
        assert await session.scalar(select(Contact).where(Contact.email == EMAIL)) is None


async def test_dashboard_counts_sent_confirmed_declined_pending(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    token: str,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    ctx = await current_ctx(session_factory)
    for n in range(3):
        await apply(session_factory, ctx, "customer", customer(f"cus_n{n}", f"n{n}@example.com"))
    smtp[0].rcpt_replies = ["550 5.1.1 unknown"]  # the first of the three is rejected
    await run_worker_burst(mail_settings)
    await app_client.post(f"/optin/{token}/confirm")
    second = urlsplit(confirm_link(smtp[0].messages[1])).path
    await app_client.post(f"{second}/decline")

    response = await app_client.get(f"/v1/accounts/{ACCOUNT}", headers=platform_headers)
    assert response.status_code == 200
    assert response.json()["optin"] == {"sent": 3, "confirmed": 1, "declined": 1, "pending": 1}


async def test_metrics_count_sends_and_answers(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, token: str
) -> None:
    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    confirmed = sample("stripesync_optin_responses_total", response="confirmed")
    assert sample("stripesync_optin_emails_total", outcome="sent") >= 1
    await app_client.post(f"/optin/{token}/confirm")
    await app_client.post(f"/optin/{token}/confirm")  # a repeat counts nothing
    assert sample("stripesync_optin_responses_total", response="confirmed") == confirmed + 1
    scraped = (await app_client.get("/metrics")).text
    assert 'stripesync_optin_emails_total{outcome="sent"}' in scraped
