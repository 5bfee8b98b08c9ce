"""Accounts with something behind every kind of id the API takes, made through the API
itself (Stripe's OAuth faked with respx) and real webhook events processed as the worker
does. Used by the security and fuzz suites."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import respx

from stripesync.webhooks.tasks import process_event
from tests.conftest import ops_headers, platform_headers
from tests.support import signed_headers, stripe_event

STRIPE_OAUTH = "https://connect.stripe.com/oauth"
RETURN_URL = "http://localhost:3000/integrations/stripe"


@dataclass
class Seeded:
    """One seeded account: its ids, and the secrets stored for it (to look for in dumps)."""

    account_id: str
    stripe_account: str
    email: str  # a contact made from a Stripe customer
    unsubscribed_email: str  # reported unsubscribed by the platform
    segment_id: str
    job_id: str
    event_id: str
    secrets: tuple[str, ...]


def fake_stripe_oauth(router: respx.MockRouter) -> None:
    """Stripe's token endpoint grants the Stripe account named by the code (`ac_<acct>`)."""

    def grant(request: httpx.Request) -> httpx.Response:
        acct = parse_qs(request.content.decode())["code"][0].removeprefix("ac_")
        return httpx.Response(
            200,
            json={
                "access_token": f"sk_test_{acct}_access_secret",
                "refresh_token": f"rt_{acct}_refresh_secret",
                "token_type": "bearer",
                "stripe_user_id": acct,
                "livemode": False,
                "scope": "read_only",
            },
        )

    router.post(f"{STRIPE_OAUTH}/token").mock(side_effect=grant)
    router.post(f"{STRIPE_OAUTH}/deauthorize").respond(200, json={"stripe_user_id": "acct"})


def _ok(response: httpx.Response, *statuses: int) -> dict[str, Any]:
    assert response.status_code in statuses, (str(response.request.url), response.text)
    return response.json() if response.content else {}


async def deliver_signed(client: httpx.AsyncClient, event: dict[str, Any]) -> None:
    body = httpx.Request("POST", "/", json=event).content
    response = await client.post("/webhooks/stripe", content=body, headers=signed_headers(body))
    _ok(response, 200)


async def seed_account(
    client: httpx.AsyncClient, worker_ctx: dict[str, Any], account_id: str
) -> Seeded:
    """Credentials, opt-in email settings (activated), a Stripe connection in opt-in mode,
    a custom segment, thresholds, a contact from a processed `customer.created`, an
    unsubscribe report, a resync job and a stored event. Needs `fake_stripe_oauth` active."""
    slug = account_id.replace("_", "-")
    acct = f"acct_{account_id.replace('_', '')}"
    base = f"/v1/accounts/{account_id}"
    cc = {
        "access_token": f"cc-access-{slug}-secret",
        "refresh_token": f"cc-refresh-{slug}-secret",
        "expires_at": "2099-01-01T00:00:00Z",
    }
    account = {
        "name": f"Merchant {account_id}",
        "owner_email": f"owner@{slug}.example",
        "postal_address": "1 Test Lane, Portland OR 97201, USA",
        "cc_credentials": cc,
    }
    h = platform_headers
    _ok(await client.put(base, json=account, headers=h), 200, 201)
    optin = {
        "subject": f"Stay in touch with {account_id}",
        "from_name": "Merchant",
        "from_email": f"hello@{slug}.example",
        "reply_to": f"reply@{slug}.example",
        "intro": "We would like to keep you posted.",
    }
    _ok(await client.put(f"{base}/optin-email", json=optin, headers=h), 200)
    _ok(await client.post(f"{base}/optin-email/activate", headers=h), 200)
    started = _ok(
        await client.post(
            f"{base}/stripe/connect", json={"mode": "optin", "return_url": RETURN_URL}, headers=h
        ),
        201,
    )
    state = parse_qs(urlsplit(started["authorize_url"]).query)["state"][0]
    landed = await client.get(
        "/oauth/stripe/callback", params={"code": f"ac_{acct}", "state": state}
    )
    assert landed.status_code == 303 and "status=connected" in landed.headers["location"], landed
    rule = {"field": "purchase_count", "op": "gte", "value": 1}
    segment = _ok(
        await client.post(f"{base}/segments", json={"name": "Buyers", "rule": rule}, headers=h),
        201,
    )
    thresholds = {"recent_days": 21, "lapsed_days": 90, "refund_days": 60}
    _ok(await client.put(f"{base}/segment-settings", json=thresholds, headers=h), 200)

    email = f"buyer@{slug}.example"
    event = stripe_event(
        "customer.created",
        {
            "id": f"cus_{account_id}",
            "object": "customer",
            "email": email,
            "name": "Some Buyer",
            "created": int(time.time()) - 3600,
            "livemode": False,
            "metadata": {},
            "address": None,
        },
        account=acct,
    )
    await deliver_signed(client, event)  # stored before the 200, so it can be processed
    assert await process_event(worker_ctx, event["id"]) == "processed"
    _ok(await client.get(f"{base}/contacts", params={"email": email}, headers=h), 200)

    unsubscribed = f"gone@{slug}.example"
    _ok(
        await client.post(f"{base}/contacts/unsubscribed", json={"email": unsubscribed}, headers=h),
        204,
    )
    job = _ok(await client.post(f"{base}/stripe/resync", headers=h), 202)
    _ok(await client.get(f"/v1/jobs/{job['job_id']}", headers=ops_headers), 200)
    secrets = (
        cc["access_token"],
        cc["refresh_token"],
        f"sk_test_{acct}_access_secret",
        f"rt_{acct}_refresh_secret",
    )
    return Seeded(
        account_id, acct, email, unsubscribed, segment["id"], job["job_id"], event["id"], secrets
    )
