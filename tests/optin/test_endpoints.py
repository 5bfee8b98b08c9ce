"""The platform's opt-in email endpoints: settings, preview (exactly as sent), activation,
escaping of what the merchant writes, and what the sync engine does after an answer."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest
from sqlalchemy import select, update
from tests.conftest import platform_headers, run_worker_burst
from tests.fakes.constant_contact import FakeConstantContact
from tests.optin.conftest import (
    ACCOUNT,
    MERCHANT,
    SmtpCapture,
    apply,
    confirm_link,
    connect,
    customer,
    html_part,
    ledger,
    text_part,
)

from stripesync.clients.constant_contact import ConstantContactClient
from stripesync.config import Settings
from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Segment
from stripesync.sync.service import sync_account

BASE = f"/v1/accounts/{ACCOUNT}/optin-email"
EVIL = '<script>alert("x")</script><img src=x onerror=alert(1)> & <b>bold</b>'


async def _account(app_client: httpx.AsyncClient, **fields: object) -> None:
    body = {"name": MERCHANT, "owner_email": "owner@bluefern.example", **fields}
    response = await app_client.put(f"/v1/accounts/{ACCOUNT}", json=body, headers=platform_headers)
    assert response.status_code in (200, 201)


async def test_defaults_name_the_merchant(app_client: httpx.AsyncClient) -> None:
    await _account(app_client)
    response = await app_client.get(BASE, headers=platform_headers)
    assert response.status_code == 200
    body = response.json()
    assert MERCHANT in body["subject"] and MERCHANT in body["intro"]
    assert body["from_name"] == MERCHANT
    assert body["from_email"] == body["reply_to"] == "owner@bluefern.example"
    assert body["activated_at"] is None


async def test_put_saves_and_validates_email_addresses(app_client: httpx.AsyncClient) -> None:
    await _account(app_client)
    good = {
        "subject": "News from the kiln",
        "from_name": "Blue Fern",
        "from_email": "hello@bluefern.example",
        "reply_to": "Owner@BlueFern.example",
        "intro": "Hello!",
    }
    saved = await app_client.put(BASE, json=good, headers=platform_headers)
    assert saved.status_code == 200
    assert saved.json()["reply_to"] == "owner@bluefern.example"
    assert (await app_client.get(BASE, headers=platform_headers)).json()["subject"] == good[
        "subject"
    ]

    bad = {**good, "from_email": "not-an-address", "reply_to": "also bad"}
    response = await app_client.put(BASE, json=bad, headers=platform_headers)
    assert response.status_code == 422
    fields = {f["field"] for f in response.json()["error"]["details"]["fields"]}
    assert fields == {"body.from_email", "body.reply_to"}

    injected = {**good, "subject": "Hi\r\nBcc: everyone@example.com"}
    response = await app_client.put(BASE, json=injected, headers=platform_headers)
    assert response.status_code == 422


async def test_endpoints_need_the_platform_token_and_a_known_account(
    app_client: httpx.AsyncClient,
) -> None:
    assert (await app_client.get(BASE)).status_code == 401
    response = await app_client.get(BASE, headers=platform_headers)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "account_not_found"


async def test_connect_in_optin_mode_needs_the_activated_email(
    app_client: httpx.AsyncClient,
) -> None:
    await _account(app_client)
    connect_body = {"mode": "optin", "return_url": "http://localhost:3000/integrations/stripe"}
    url = f"/v1/accounts/{ACCOUNT}/stripe/connect"
    refused = await app_client.post(url, json=connect_body, headers=platform_headers)
    assert refused.status_code == 409

    activated = await app_client.post(f"{BASE}/activate", headers=platform_headers)
    assert activated.status_code == 200 and activated.json()["activated_at"] is not None
    again = await app_client.post(f"{BASE}/activate", headers=platform_headers)
    assert again.json()["activated_at"] == activated.json()["activated_at"]

    accepted = await app_client.post(url, json=connect_body, headers=platform_headers)
    assert accepted.status_code == 201


async def test_merchant_intro_cannot_inject_markup(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    await connect(session_factory, intro=EVIL)
    async with transaction(session_factory) as session:
        await session.execute(
            update(Account).where(Account.id == ACCOUNT).values(name='Fern <i>& "Co"</i>')
        )
    preview = await app_client.get(f"{BASE}/preview?format=html", headers=platform_headers)
    await apply(
        session_factory, await _ctx(session_factory), "customer", customer("c1", "a@example.com")
    )
    await run_worker_burst(mail_settings)
    smtp[0].wait_for(1)
    sent = html_part(smtp[0].messages[0])

    for html in (preview.text, sent):
        assert "<script>" not in html and "<img" not in html and "<b>" not in html
        assert "<i>" not in html
        assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
        assert "&amp; &lt;b&gt;bold&lt;/b&gt;" in html
    # The text part is text: shown as written, not entity-encoded.
    assert EVIL in text_part(smtp[0].messages[0])


async def _ctx(session_factory: SessionFactory):  # type: ignore[no-untyped-def]
    from tests.optin.conftest import current_ctx

    return await current_ctx(session_factory)


async def test_preview_is_the_email_as_sent_with_links_that_confirm_nothing(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    await connect(session_factory, intro="We make mugs.\n\nBy hand, in Portland.")
    html = await app_client.get(f"{BASE}/preview", headers=platform_headers)
    text = await app_client.get(f"{BASE}/preview?format=text", headers=platform_headers)
    assert html.headers["content-type"].startswith("text/html")
    assert text.headers["content-type"].startswith("text/plain")

    await apply(
        session_factory, await _ctx(session_factory), "customer", customer("c1", "a@example.com")
    )
    await run_worker_burst(mail_settings)
    smtp[0].wait_for(1)
    message = smtp[0].messages[0]
    page = confirm_link(message).split("?", 1)[0]
    preview_page = "http://testserver/optin/preview"
    # SMTP carries lines with CRLF; the content is otherwise byte for byte the preview.
    sent_html = html_part(message).replace("\r\n", "\n")
    sent_text = text_part(message).replace("\r\n", "\n")
    assert html.text == sent_html.replace(page, preview_page)
    assert text.text == sent_text.replace(page, preview_page)
    assert '<p style="margin:0 0 16px;">By hand, in Portland.</p>' in html.text

    ledger_before = len(await ledger(session_factory))
    shown = await app_client.get(urlsplit(preview_page).path + "?answer=yes")
    assert shown.status_code == 200 and "Preview" in shown.text
    for answer in ("confirm", "decline"):
        response = await app_client.post(f"/optin/preview/{answer}")
        assert response.status_code == 200 and "Preview" in response.text
    assert len(await ledger(session_factory)) == ledger_before
    bad = await app_client.get(f"{BASE}/preview?format=pdf", headers=platform_headers)
    assert bad.status_code == 422


@pytest.fixture
def fake_cc() -> Iterator[FakeConstantContact]:
    with FakeConstantContact(
        requests_per_second=1000, processing_after=0.01, completed_after=0.05
    ) as fake:
        yield fake


async def test_confirmed_person_is_pushed_with_sign_up_form_and_others_are_not(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
    fake_cc: FakeConstantContact,
) -> None:
    await connect(session_factory)
    ctx = await _ctx(session_factory)
    for n, email in enumerate(("yes@example.com", "no@example.com", "silent@example.com")):
        await apply(session_factory, ctx, "customer", customer(f"c{n}", email))
    await run_worker_burst(mail_settings)
    smtp[0].wait_for(3)
    links = {m["To"]: urlsplit(confirm_link(m)).path for m in smtp[0].messages}
    assert (await app_client.post(f"{links['yes@example.com']}/confirm")).status_code == 200
    assert (await app_client.post(f"{links['no@example.com']}/decline")).status_code == 200

    # Mirror the account's segments as platform lists, as the sync feature does.
    async with transaction(session_factory) as session:
        segments = list(await session.scalars(select(Segment)))
        for row in segments:
            list_id = fake_cc._create_list({"name": row.name})[1]["list_id"]
            await session.execute(
                update(Segment).where(Segment.id == row.id).values(platform_list_id=list_id)
            )

    async def token(force_refresh: bool) -> str:
        return "t"

    async with httpx.AsyncClient() as http:
        client = ConstantContactClient(http, api_base=fake_cc.url, token=token, backoff_base=0.01)
        await sync_account(session_factory, client, ACCOUNT, poll_interval=0.02)

    signed_up = [r.body["email_address"] for r in fake_cc.api_requests("sign_up_form")]
    assert signed_up == ["yes@example.com"]
    assert fake_cc.api_requests("contacts_json_import") == []
