"""One end-to-end run in a real browser: the email a local SMTP server captured, its link
opened in headless Chromium against the app served over HTTP, "Yes" clicked."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import uvicorn
from tests.conftest import ROOT, make_settings, run_worker_burst
from tests.optin.conftest import (
    MERCHANT,
    SmtpCapture,
    apply,
    confirm_link,
    connect,
    contact_of,
    customer,
    free_port,
    ledger,
)

from stripesync.app import create_app
from stripesync.config import Settings
from stripesync.db import SessionFactory

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is not installed")


@pytest.fixture
async def served(
    database_url: str, redis_url: str, smtp: tuple[SmtpCapture, str]
) -> AsyncIterator[tuple[str, Settings]]:
    """The real app on 127.0.0.1 over HTTP (uvicorn in this event loop)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        database_url,
        redis_url,
        public_base_url=base,
        smtp_url=smtp[1],
        mail_from="optin@stripesync.test",
        mail_per_second=1000,
    )
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.02)
    assert server.started, "uvicorn did not start"
    try:
        yield base, settings
    finally:
        server.should_exit = True
        await task


async def test_person_confirms_in_a_real_browser(
    served: tuple[str, Settings],
    session_factory: SessionFactory,
    smtp: tuple[SmtpCapture, str],
    tmp_path: Path,
) -> None:
    if not CHROMIUM.exists():
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    base, settings = served
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_1", "ann@example.com"))
    await run_worker_burst(settings)
    smtp[0].wait_for(1)
    link = confirm_link(smtp[0].messages[0])
    assert link.startswith(f"{base}/optin/")

    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            blocked: list[str] = []
            page.on(
                "request",
                lambda request: (
                    None if request.url.startswith(base) else blocked.append(request.url)
                ),
            )
            await page.goto(link)
            assert await page.get_attribute("html", "lang") == "en"
            assert MERCHANT in await page.inner_text("main")
            await page.screenshot(path=str(tmp_path / "optin-choice.png"), full_page=True)
            assert (await contact_of(session_factory, "ann@example.com")).consent_state == "pending"

            # Keyboard only: focus the "Yes" button and press Enter.
            yes = page.get_by_role("button", name="Yes, keep me updated")
            await yes.focus()
            async with page.expect_navigation():
                await page.keyboard.press("Enter")
            await page.get_by_role("heading", name="Thank you!").wait_for()
            shot = tmp_path / "optin-thanks.png"
            await page.screenshot(path=str(shot), full_page=True)
            assert blocked == []  # the pages load nothing from anywhere else
        finally:
            await browser.close()

    contact = await contact_of(session_factory, "ann@example.com")
    assert contact.consent_state == "confirmed"
    entry = (await ledger(session_factory))[-1]
    assert entry.state == "confirmed" and "Chrome" in (entry.evidence["user_agent"] or "")
    out = ROOT / "test-output"
    out.mkdir(exist_ok=True)
    for name in ("optin-choice.png", "optin-thanks.png"):
        shutil.copy(tmp_path / name, out / name)
