"""`return_url` open-redirect attempts, beyond tests/accounts/test_connect.py's basic set:
every trick is refused with 422 and no state is handed out; URLs that are accepted send
the merchant's browser only to an allowed host, and odd characters never make a 500."""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx
import respx
from sqlalchemy import func, select

from stripesync.db import SessionFactory
from stripesync.models import OAuthState
from tests.accounts.conftest import callback, start_connect, state_of
from tests.conftest import platform_headers

ALLOWED_HOSTS = {"localhost", "127.0.0.1"}  # the dev default prefixes in tests

ATTACKS = [
    # userinfo: the allowed host is only the user name
    "http://localhost@evil.example/",
    "http://localhost:3000@evil.example/",
    "http://localhost:@evil.example",
    "http://localhost%40evil.example/",
    "http://localhost\\@evil.example/",
    "http://127.0.0.1:80@evil.example",
    # prefix extension: the allowed text continues the host name
    "http://localhost.evil.example/",
    "http://localhostevil.example/",
    "http://localhost-evil.example/",
    "http://127.0.0.1.nip.evil.example/",
    "http://localhost:3000.evil.example/",
    # backslashes and slashes browsers reinterpret
    "http://localhost\\evil.example",
    "http:\\\\evil.example",
    "http:/\\evil.example",
    "\\\\evil.example",
    "/\\evil.example",
    # scheme-relative and relative
    "//evil.example",
    "//localhost@evil.example",
    "///evil.example",
    "/cb",
    # unicode look-alikes of dots and slashes in the host
    "http://localhost\u3002evil.example/",
    "http://localhost\uff0eevil.example/",
    "http://localhost\u2024evil.example/",
    "http://localhost\u2215evil.example/",
    "http://localhost\uff03@evil.example/",
    # percent-encoded separators inside the host
    "http://localhost%2eevil.example/",
    "http://localhost%2fevil.example/",
    "http://localhost%23@evil.example/",
    "http://localhost%3a80@evil.example/",
    # other schemes
    "javascript:alert(document.domain)",
    "JavaScript://localhost/%0Aalert(1)",
    "data:text/html,<script>alert(1)</script>",
    "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "vbscript:msgbox(1)",
    "file:///etc/passwd",
    "ftp://localhost/",
    "https://localhost/",  # not an allowed prefix in tests (http only)
    # whitespace, controls and case games before the scheme
    " http://localhost/",
    "\thttp://localhost/",
    "\x00http://localhost/",
    "HTTP://LOCALHOST.evil.example/",
    "http://LOCALHOST@evil.example/",
    "",
    "localhost",
]


async def state_count(factory: SessionFactory) -> int:
    async with factory() as session:
        return int(await session.scalar(select(func.count()).select_from(OAuthState)) or 0)


async def test_open_redirect_attempts_are_refused(
    app_client: httpx.AsyncClient, account: str, session_factory: SessionFactory
) -> None:
    for return_url in ATTACKS:
        response = await start_connect(app_client, return_url=return_url)
        assert response.status_code == 422, (return_url, response.text)
        code = response.json()["error"]["code"]
        assert code in ("return_url_not_allowed", "validation_error"), return_url
    assert await state_count(session_factory) == 0


# Odd but harmless: the host is an allowed one, the rest is path, query or fragment.
ACCEPTED_ODD = [
    "http://localhost/\\evil.example",  # browsers read `/\\` as `//`: still a path
    "http://localhost/?next=//evil.example",
    "http://localhost#@evil.example",
    "http://localhost?@evil.example",
    "http://localhost:3000/cb?x=%40evil.example",
    "http://127.0.0.1:8080/a/../..//evil.example",
    "http://localhost/\u2603/caf\u00e9?q=\u3002",
    "http://localhost/a\r\nLocation: http://evil.example/",
]


async def test_accepted_odd_return_urls_redirect_only_to_an_allowed_host(
    app_client: httpx.AsyncClient, account: str, stripe_oauth: respx.MockRouter
) -> None:
    for return_url in ACCEPTED_ODD:
        for params in ({"error": "access_denied"}, {"code": "ac_1"}):
            started = await start_connect(app_client, return_url=return_url)
            assert started.status_code == 201, (return_url, started.text)
            state = state_of(started.json()["authorize_url"])
            response = await callback(app_client, **params, state=state)
            assert response.status_code == 303, (return_url, response.text)
            location = response.headers["location"]
            parts = urlsplit(location)
            assert parts.scheme == "http" and parts.hostname in ALLOWED_HOSTS, location
            assert "@" not in parts.netloc and "\\" not in parts.netloc, location
            assert not any(ch in location for ch in "\r\n\t\x00"), location
        disconnected = await app_client.delete(
            "/v1/accounts/acc_1/stripe", headers=platform_headers
        )
        assert disconnected.status_code == 204
