"""Encryption at rest: MultiFernet under the configured keys, rotate-keys, and no token in
clear anywhere after a full connect flow (every table, every log line, Redis)."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
from datetime import timedelta

import httpx
import pytest
import redis.asyncio as redis_async
import respx
import structlog
from cryptography.fernet import Fernet
from sqlalchemy import text

from stripesync.accounts.tokens import cc_access_token, stripe_access_token
from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.kit import crypto
from stripesync.kit.clock import utcnow
from stripesync.models import Account, StripeConnection
from tests.accounts.conftest import (
    CC_TOKEN_URL,
    DEAUTHORIZE_URL,
    TOKEN_URL,
    authorize,
    callback,
    grant,
    put_account,
    redirect_params,
)
from tests.conftest import make_settings, platform_headers


def settings_with_keys(settings: Settings, *keys: str) -> Settings:
    assert settings.database_url and settings.redis_url
    return make_settings(settings.database_url, settings.redis_url, encryption_keys=",".join(keys))


def test_first_key_encrypts_and_every_key_decrypts(settings: Settings) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    under_old = settings_with_keys(settings, old)
    rotated = settings_with_keys(settings, new, old)
    ciphertext = crypto.encrypt(under_old, "secret-value")
    assert "secret-value" not in ciphertext
    assert crypto.decrypt(rotated, ciphertext) == "secret-value"
    fresh = crypto.encrypt(rotated, "secret-value")
    assert crypto.decrypt(settings_with_keys(settings, new), fresh) == "secret-value"
    with pytest.raises(crypto.DecryptionError):
        crypto.decrypt(settings_with_keys(settings, new), ciphertext)


async def test_rotate_keys_reencrypts_every_stored_secret_under_the_first_key(
    session_factory: SessionFactory, settings: Settings
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    under_old = settings_with_keys(settings, old)
    async with session_factory() as session, session.begin():
        for i in range(3):
            session.add(
                Account(
                    id=f"acc_{i}",
                    name="n",
                    owner_email="o@example.com",
                    cc_access_token_encrypted=crypto.encrypt(under_old, f"cc-access-{i}"),
                    cc_refresh_token_encrypted=crypto.encrypt(under_old, f"cc-refresh-{i}"),
                )
            )
        await session.flush()
        session.add(
            StripeConnection(
                account_id="acc_0",
                stripe_account_id="acct_0",
                livemode=False,
                mode="direct",
                access_token_encrypted=crypto.encrypt(under_old, "stripe-access"),
                refresh_token_encrypted=None,
            )
        )

    env = {
        **os.environ,
        "STRIPESYNC_DATABASE_URL": settings.database_url or "",
        "STRIPESYNC_ENCRYPTION_KEYS": f"{new},{old}",
        "STRIPESYNC_LOG_FORMAT": "console",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "stripesync.cli", "rotate-keys"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 7 stored secrets" in result.stdout

    only_new = settings_with_keys(settings, new)
    async with session_factory() as session:
        for i in range(3):
            account = await session.get(Account, f"acc_{i}")
            assert account is not None
            assert account.cc_access_token_encrypted and account.cc_refresh_token_encrypted
            assert crypto.decrypt(only_new, account.cc_access_token_encrypted) == f"cc-access-{i}"
            assert crypto.decrypt(only_new, account.cc_refresh_token_encrypted) == (
                f"cc-refresh-{i}"
            )
        connection = await session.get(StripeConnection, 1)
        assert connection is not None and connection.access_token_encrypted
        assert crypto.decrypt(only_new, connection.access_token_encrypted) == "stripe-access"


def test_every_token_column_is_covered_by_rotation() -> None:
    from stripesync.models import Base

    covered = {
        f"{table.name}.{column.name}"
        for table, columns in crypto.encrypted_columns(Base.metadata.sorted_tables)
        for column in columns
    }
    assert {
        "accounts.cc_access_token_encrypted",
        "accounts.cc_refresh_token_encrypted",
        "stripe_connections.access_token_encrypted",
        "stripe_connections.refresh_token_encrypted",
    } <= covered


SECRETS = {
    "stripe access": "tok_stripe_access_7f3a9c",
    "stripe refresh": "tok_stripe_refresh_1b2c3d",
    "stripe access refreshed": "tok_stripe_access_next_99e",
    "stripe refresh rotated": "tok_stripe_refresh_next_42d",
    "cc access": "tok_cc_access_5e6f7a",
    "cc refresh": "tok_cc_refresh_8b9c0d",
    "cc access refreshed": "tok_cc_access_next_c1d",
    "cc refresh rotated": "tok_cc_refresh_next_e2f",
    "platform secret key": "sk_test_platform",
    "cc client secret": "cc-secret",
    "oauth code": "ac_authorization_code_5x5",
}


async def dump_every_table(factory: SessionFactory) -> str:
    """Every row of every table in the database, all columns, as text."""
    async with factory() as session:
        tables = (
            await session.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")
            )
        ).scalars()
        chunks = []
        for table in list(tables):
            rows = await session.execute(text(f'SELECT t::text FROM "{table}" t'))
            chunks.append(f"{table}: " + "\n".join(r[0] for r in rows))
    return "\n".join(chunks)


async def dump_redis(url: str) -> bytes:
    client = redis_async.Redis.from_url(url)
    out = []
    try:
        async for key in client.scan_iter():
            kind = (await client.type(key)).decode()
            if kind == "string":
                out.append(await client.get(key) or b"")
            elif kind == "zset":
                out.extend(await client.zrange(key, 0, -1))
            elif kind == "list":
                out.extend(await client.lrange(key, 0, -1))
            out.append(key)
    finally:
        await client.aclose()
    return b"\n".join(out)


async def test_no_token_in_clear_in_any_table_log_or_queue_after_a_full_connect_flow(
    app_client: httpx.AsyncClient,
    session_factory: SessionFactory,
    settings: Settings,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # As kit/logging configures production: httpx's request lines stay out (here they would
    # be the test client's own GET of the callback URL).
    caplog.set_level(logging.WARNING, logger="httpx")
    with structlog.testing.capture_logs() as events, respx.mock(assert_all_mocked=True) as router:
        router.post(TOKEN_URL).mock(
            side_effect=[
                httpx.Response(
                    200,
                    json=grant(
                        "acct_secretive",
                        access_token=SECRETS["stripe access"],
                        refresh_token=SECRETS["stripe refresh"],
                        expires_in=60,
                    ),
                ),
                httpx.Response(
                    200,
                    json=grant(
                        "acct_secretive",
                        access_token=SECRETS["stripe access refreshed"],
                        refresh_token=SECRETS["stripe refresh rotated"],
                        expires_in=3600,
                    ),
                ),
            ]
        )
        router.post(CC_TOKEN_URL).respond(
            200,
            json={
                "access_token": SECRETS["cc access refreshed"],
                "refresh_token": SECRETS["cc refresh rotated"],
                "expires_in": 86400,
            },
        )
        router.post(DEAUTHORIZE_URL).respond(200, json={"stripe_user_id": "acct_secretive"})

        creds = {
            "access_token": SECRETS["cc access"],
            "refresh_token": SECRETS["cc refresh"],
            "expires_at": (utcnow() + timedelta(minutes=1)).isoformat(),
        }
        put = await put_account(app_client, cc_credentials=creds)
        assert put.status_code == 201
        state = await authorize(app_client)
        response = await callback(app_client, code=SECRETS["oauth code"], state=state)
        assert redirect_params(response)[1]["status"] == "connected"
        http = app_client.app.state.http  # type: ignore[attr-defined]
        assert (
            await stripe_access_token(session_factory, http, settings, "acc_1")
            == (SECRETS["stripe access refreshed"])
        )
        assert (
            await cc_access_token(session_factory, http, settings, "acc_1")
            == (SECRETS["cc access refreshed"])
        )
        dashboard = await app_client.get("/v1/accounts/acc_1", headers=platform_headers)
        tables = await dump_every_table(session_factory)
        queued = await dump_redis(redis_url)
        disconnected = await app_client.delete(
            "/v1/accounts/acc_1/stripe", headers=platform_headers
        )
        assert disconnected.status_code == 204
        # exchange, Stripe refresh, Constant Contact refresh, deauthorize
        assert router.calls.call_count == 4

    logs = "\n".join(str(e) for e in events) + "\n" + caplog.text
    assert "stripe_connected" in logs and "cc_token_refreshed" in logs  # logs were captured
    assert "acct_secretive" in tables  # the dump holds the connection
    for name, secret in SECRETS.items():
        assert secret not in tables, f"{name} in clear in the database"
        assert secret not in logs, f"{name} in the logs"
        assert secret.encode() not in queued, f"{name} in Redis"
        assert secret not in put.text + dashboard.text, f"{name} echoed"
