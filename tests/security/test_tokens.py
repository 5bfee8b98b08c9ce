"""OAuth `state` and opt-in link tokens: the cases tests/accounts/test_callback.py and
tests/optin/test_pages.py do not already cover.

Covered there (not repeated): a state works once, also after a failed attempt; it expires
after 30 minutes; garbage, empty, huge and other-key states are a 400 page; a state bound
to another account is refused; concurrent callbacks connect once. Opt-in: GET changes
nothing; a forged (one character changed) or unknown token is a 404 page; expired is 410;
repeats are harmless; a decline is final; only the token's hash is stored; an erased
person's link is unknown.

Added here: tampering anywhere in a genuine state (not only its end) and error callbacks
carrying a forged state redirect nowhere and leave the genuine state usable; an opt-in
token in any other spelling (case, encoding, suffixes, truncation) is unknown, records
nothing, and leaves the genuine link working.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import quote, urlsplit

import httpx
import respx
from sqlalchemy import func, select

from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.models import ConsentEvent, StripeConnection
from tests.accounts.conftest import authorize, callback, redirect_params
from tests.conftest import run_worker_burst
from tests.optin.conftest import SmtpCapture, apply, confirm_link, connect, contact_of, customer


async def connection_count(factory: SessionFactory) -> int:
    async with factory() as session:
        return int(await session.scalar(select(func.count()).select_from(StripeConnection)) or 0)


def tampered(state: str) -> list[str]:
    """The state with one character changed at the start, quarter points, middle and end,
    plus truncated and extended copies."""
    variants = []
    for i in (0, len(state) // 4, len(state) // 2, 3 * len(state) // 4, len(state) - 2):
        swap = "A" if state[i] != "A" else "B"
        variants.append(state[:i] + swap + state[i + 1 :])
    # (Appending after the base64 padding is not a forgery: it decodes to the same token,
    # which stays single-use, so it is not among the variants. Nor is a change to the last
    # character's unused low bits, which also decodes to the same token: filtered below.)
    candidates = [*variants, state[:-4], state[:-1] + "!", state[::-1], state.swapcase()]
    return [v for v in candidates if _decoded(v) != _decoded(state)]


def _decoded(token: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(token.encode())
    except (binascii.Error, ValueError):
        return None


async def test_tampered_state_is_refused_and_the_genuine_one_still_connects(
    app_client: httpx.AsyncClient,
    account: str,
    stripe_oauth: respx.MockRouter,
    session_factory: SessionFactory,
) -> None:
    state = await authorize(app_client)
    for forged in tampered(state):
        for params in ({"code": "ac_stolen"}, {"error": "access_denied"}):
            response = await callback(app_client, **params, state=forged)
            assert response.status_code == 400, (forged, params)
            assert "location" not in response.headers  # no redirect to anywhere
    assert not stripe_oauth.routes["token"].called
    assert await connection_count(session_factory) == 0

    _, params = redirect_params(await callback(app_client, code="ac_1", state=state))
    assert params["status"] == "connected"
    assert await connection_count(session_factory) == 1


EMAIL = "carol@example.com"


async def _token(
    session_factory: SessionFactory, mail_settings: Settings, smtp: tuple[SmtpCapture, str]
) -> str:
    ctx = await connect(session_factory)
    await apply(session_factory, ctx, "customer", customer("cus_tok", EMAIL))
    await run_worker_burst(mail_settings)
    smtp[0].wait_for(1)
    return urlsplit(confirm_link(smtp[0].messages[0])).path.removeprefix("/optin/")


async def test_optin_token_in_any_other_spelling_is_unknown_and_records_nothing(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    mail_settings: Settings,
    smtp: tuple[SmtpCapture, str],
) -> None:
    token = await _token(session_factory, mail_settings, smtp)
    variants = {
        token.upper(),
        token.lower(),
        token.swapcase(),
        token[:-1],
        token[1:],
        token + "A",
        token + token,
        quote(token + "\x00"),
        quote(token + " "),
        quote(" " + token),
        token + "%2F",
        token + ".",
        quote(token, safe="").replace("-", "%2D").replace("_", "%5F") + "%00",
    } - {token}
    async with session_factory() as session:
        ledger_before = await session.scalar(select(func.count()).select_from(ConsentEvent))
    for variant in sorted(variants):
        for method, suffix in (("GET", ""), ("POST", "/confirm"), ("POST", "/decline")):
            response = await app_client.request(method, f"/optin/{variant}{suffix}")
            if method == "GET" and response.status_code == 307:
                # `token%2F`: Starlette's trailing-slash redirect to the genuine GET page,
                # which changes nothing (checked below).
                assert response.headers["location"].endswith(f"/optin/{token}"), variant
                continue
            assert response.status_code == 404, (variant, suffix, response.status_code)
            if "%2F" not in variant:  # (with a slash no route matches: the JSON 404)
                assert response.headers["content-type"].startswith("text/html"), variant
    contact = await contact_of(session_factory, EMAIL)
    assert contact.consent_state == "pending"
    async with session_factory() as session:
        ledger_after = await session.scalar(select(func.count()).select_from(ConsentEvent))
    assert ledger_after == ledger_before

    assert (await app_client.post(f"/optin/{token}/confirm")).status_code == 200
    assert (await contact_of(session_factory, EMAIL)).consent_state == "confirmed"
