"""Built-in segments exactly as segments.md defines them, their thresholds, and the edges:
zero-decimal and several currencies, refunds only, the 30/120/90-day boundaries."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import time_machine

from stripesync.db import SessionFactory, transaction
from stripesync.segments.service import ensure_builtin_segments, recompute_account
from tests.conftest import platform_headers
from tests.segments.conftest import NOW, add_contact, counts, memberships, set_activity

DAY = timedelta(days=1)
EXPECTED = [
    ("all", "Stripe - All Customers"),
    ("prospects", "Stripe - Prospects"),
    ("first_time", "Stripe - First-time Customers"),
    ("repeat", "Stripe - Repeat Customers"),
    ("recent", "Stripe - Recent Customers"),
    ("lapsed", "Stripe - Lapsed Customers"),
    ("high_value", "Stripe - High-Value Customers"),
    ("failed_payment", "Stripe - Failed Payments"),
    ("refunded", "Stripe - Refunded Customers"),
]


async def recompute(factory: SessionFactory, account_id: str) -> None:
    async with transaction(factory) as session:
        await recompute_account(session, account_id)


async def test_segment_list_has_the_nine_builtins_with_their_list_names(
    app_client: httpx.AsyncClient, account: str, frozen: time_machine.Coordinates
) -> None:
    response = await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    assert response.status_code == 200
    segments = response.json()["segments"]
    assert [(s["key"], s["name"]) for s in segments] == EXPECTED
    assert {s["kind"] for s in segments} == {"builtin"}
    by_key = {s["key"]: s for s in segments}
    assert by_key["all"]["rule"] is None
    assert by_key["recent"]["rule"] == {
        "field": "last_purchase_at",
        "op": "within_days",
        "value": 30,
    }
    assert by_key["high_value"]["rule"] == {
        "any": [{"field": "total_spent", "op": "gte", "currency": "usd", "value": 50000}]
    }


async def test_builtins_are_created_once_however_often_they_are_ensured(
    session_factory: SessionFactory, account: str
) -> None:
    async with transaction(session_factory) as session:
        first = await ensure_builtin_segments(session, account)
        again = await ensure_builtin_segments(session, account)
    assert len(first) == 9 and again == []
    assert len(await counts(session_factory)) == 9


async def test_each_contact_lands_in_the_builtins_its_activity_says(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    prospect = await add_contact(f)
    first = await add_contact(
        f,
        purchase_count=1,
        first_purchase_at=NOW - 3 * DAY,
        last_purchase_at=NOW - 3 * DAY,
        total_spent={"usd": 1500},
    )
    repeat_lapsed = await add_contact(
        f, purchase_count=4, last_purchase_at=NOW - 200 * DAY, total_spent={"usd": 90000}
    )
    failed = await add_contact(
        f,
        purchase_count=1,
        last_purchase_at=NOW - 60 * DAY,
        last_failed_at=NOW - DAY,
        has_failed_since_last_purchase=True,
        total_spent={"usd": 100},
    )
    refunded = await add_contact(
        f,
        purchase_count=2,
        last_purchase_at=NOW - 10 * DAY,
        refund_count=1,
        last_refund_at=NOW - 5 * DAY,
        total_spent={"usd": 2000},
    )
    no_permission = [
        await add_contact(f, consent_state=state, purchase_count=3, last_purchase_at=NOW)
        for state in ("none", "pending", "declined", "unsubscribed")
    ]
    implied = await add_contact(f, consent_state="implied")

    await recompute(f, account)

    found = await memberships(f)
    assert found["all"] == {prospect, first, repeat_lapsed, failed, refunded, implied}
    assert found["prospects"] == {prospect, implied}
    assert found["first_time"] == {first, failed}
    assert found["repeat"] == {repeat_lapsed, refunded}
    assert found["recent"] == {first, refunded}
    assert found["lapsed"] == {repeat_lapsed}
    assert found["high_value"] == {repeat_lapsed}
    assert found["failed_payment"] == {failed}
    assert found["refunded"] == {refunded}
    assert not any(set(no_permission) & members for members in found.values())
    assert await counts(f) == {key: len(found.get(key, set())) for key, _ in EXPECTED}


async def test_time_boundaries_are_inclusive_at_exactly_30_120_and_90_days(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    f = session_factory
    tick = timedelta(microseconds=1)
    recent_edge = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 30 * DAY)
    not_recent = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 30 * DAY - tick)
    not_lapsed = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 120 * DAY)
    lapsed = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 120 * DAY - tick)
    refund_edge = await add_contact(f, refund_count=1, last_refund_at=NOW - 90 * DAY)
    refund_old = await add_contact(f, refund_count=1, last_refund_at=NOW - 90 * DAY - tick)

    await recompute(f, account)

    found = await memberships(f)
    assert recent_edge in found["recent"] and not_recent not in found["recent"]
    assert lapsed in found["lapsed"] and not_lapsed not in found["lapsed"]
    assert refund_edge in found["refunded"] and refund_old not in found["refunded"]

    # A day later the clock alone moves them: the scheduled recompute's job.
    frozen.shift(DAY)
    await recompute(f, account)
    found = await memberships(f)
    assert recent_edge not in found.get("recent", set())
    assert not_lapsed in found["lapsed"]
    assert refund_edge not in found.get("refunded", set())


async def test_high_value_counts_each_currency_in_its_own_minor_units(
    session_factory: SessionFactory,
    app_client: httpx.AsyncClient,
    account: str,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    response = await app_client.put(
        f"/v1/accounts/{account}/segment-settings",
        json={"high_value_min": {"usd": 50000, "JPY": 60000}},
        headers=platform_headers,
    )
    assert response.status_code == 200
    assert response.json()["high_value_min"] == {"jpy": 60000, "usd": 50000}
    yen_big = await add_contact(f, purchase_count=1, total_spent={"jpy": 60000})  # ¥60,000
    yen_small = await add_contact(f, purchase_count=1, total_spent={"jpy": 59999})
    # Several currencies are never added together: neither reaches its own minimum.
    mixed = await add_contact(f, purchase_count=3, total_spent={"usd": 49999, "jpy": 59999})
    eur_only = await add_contact(f, purchase_count=9, total_spent={"eur": 10_000_000})
    usd_edge = await add_contact(f, purchase_count=2, total_spent={"usd": 50000, "eur": 5})

    await recompute(f, account)

    assert (await memberships(f))["high_value"] == {yen_big, usd_edge}
    assert {yen_small, mixed, eur_only}.isdisjoint((await memberships(f))["high_value"])


async def test_a_contact_with_refunds_only_is_a_refunded_prospect(
    session_factory: SessionFactory, account: str, frozen: time_machine.Coordinates
) -> None:
    # Its only charge was fully refunded: not a purchase, but a refund 2 days ago.
    refunds_only = await add_contact(
        session_factory,
        purchase_count=0,
        total_spent={},
        refund_count=1,
        last_refund_at=NOW - 2 * DAY,
    )
    await recompute(session_factory, account)
    found = await memberships(session_factory)
    keys = {key for key, members in found.items() if refunds_only in members}
    assert keys == {"all", "prospects", "refunded"}


async def test_changing_thresholds_recomputes_the_builtins_they_affect(
    session_factory: SessionFactory,
    app_client: httpx.AsyncClient,
    account: str,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    url = f"/v1/accounts/{account}/segment-settings"
    assert (await app_client.get(url, headers=platform_headers)).json() == {
        "recent_days": 30,
        "lapsed_days": 120,
        "refund_days": 90,
        "high_value_min": {"usd": 50000},
    }
    buyer = await add_contact(f, purchase_count=1, last_purchase_at=NOW - 45 * DAY)
    await recompute(f, account)
    assert buyer not in (await memberships(f)).get("recent", set())

    response = await app_client.put(
        url, json={"recent_days": 60, "lapsed_days": 40}, headers=platform_headers
    )
    assert response.status_code == 200
    found = await memberships(f)
    assert buyer in found["recent"] and buyer in found["lapsed"]
    assert (await counts(f))["recent"] == 1
    segments = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    recent = next(s for s in segments["segments"] if s["key"] == "recent")
    assert recent["rule"]["value"] == 60 and recent["member_count"] == 1
    assert (await app_client.get(url, headers=platform_headers)).json()["recent_days"] == 60


async def test_bad_thresholds_are_422_naming_the_field(
    app_client: httpx.AsyncClient, account: str
) -> None:
    response = await app_client.put(
        f"/v1/accounts/{account}/segment-settings",
        json={"recent_days": 0, "high_value_min": {"dollars": 5}},
        headers=platform_headers,
    )
    assert response.status_code == 422
    fields = {f["field"] for f in response.json()["error"]["details"]["fields"]}
    assert {"body.recent_days", "body.high_value_min"} <= fields


async def test_segment_endpoints_need_the_platform_token_and_a_known_account(
    app_client: httpx.AsyncClient, account: str
) -> None:
    assert (await app_client.get(f"/v1/accounts/{account}/segments")).status_code == 401
    response = await app_client.get("/v1/accounts/nobody/segments", headers=platform_headers)
    assert response.status_code == 404


async def test_account_dashboard_counts_follow_each_change(
    app_client: httpx.AsyncClient, session_factory: SessionFactory, account: str, frozen: Any
) -> None:
    from stripesync.activity.hooks import contacts_changed

    async def dashboard_counts() -> dict[str, int]:
        body = (await app_client.get(f"/v1/accounts/{account}", headers=platform_headers)).json()
        return {s["key"]: s["member_count"] for s in body["segments"]}

    assert (await dashboard_counts())["all"] == 0
    contact_id = await add_contact(session_factory, purchase_count=1, last_purchase_at=NOW)
    async with transaction(session_factory) as session:
        await contacts_changed(session, account, [contact_id])
    counts = await dashboard_counts()
    assert (counts["all"], counts["first_time"], counts["recent"], counts["repeat"]) == (1, 1, 1, 0)

    await set_activity(session_factory, contact_id, purchase_count=2)
    async with transaction(session_factory) as session:
        await contacts_changed(session, account, [contact_id])
    counts = await dashboard_counts()
    assert (counts["first_time"], counts["repeat"]) == (0, 1)
