"""Custom segments: validation with paths, CRUD, members pages, preview, deletion."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
import time_machine
from sqlalchemy import select

from stripesync.db import SessionFactory, transaction
from stripesync.models import Segment
from stripesync.segments.rules import RuleError, parse_rule
from tests.conftest import platform_headers
from tests.segments.conftest import NOW, add_contact, counts, memberships, versions

DAY = timedelta(days=1)
SPEC_EXAMPLE: dict[str, Any] = {
    "all": [
        {"field": "purchase_count", "op": "gte", "value": 3},
        {"field": "last_purchase_at", "op": "within_days", "value": 60},
        {
            "any": [
                {"field": "total_spent", "currency": "usd", "op": "gte", "value": 20000},
                {
                    "field": "email_domain",
                    "op": "in",
                    "value": ["bluefern.example", "kiln.example"],
                },
            ]
        },
        {"not": {"field": "country", "op": "eq", "value": "CA"}},
    ]
}


def fields_of(response: httpx.Response) -> dict[str, str]:
    return {f["field"]: f["message"] for f in response.json()["error"]["details"]["fields"]}


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        (
            {
                "all": [
                    {"field": "purchase_count", "op": "gte", "value": 1},
                    {"field": "country", "op": "eq", "value": "CA"},
                    {"any": [{"field": "purchase_count", "op": "eq", "value": "3"}]},
                ]
            },
            "rule.all[2].any[0].value",
        ),
        ({"field": "favourite_colour", "op": "eq", "value": "blue"}, "rule.field"),
        ({"field": "purchase_count", "op": "within_days", "value": 3}, "rule.op"),
        ({"field": "total_spent", "op": "gte", "value": 3}, "rule.currency"),
        (
            {"not": {"field": "last_purchase_at", "op": "before", "value": "yesterday"}},
            "rule.not.value",
        ),
        ({"any": [{"field": "email_domain", "op": "is_null"}]}, "rule.any[0].op"),
        ({"any": []}, "rule.any"),
        ({"all": [{"whatever": 1}]}, "rule.all[0]"),
        ({"field": "subscription_status", "op": "eq", "value": "gold"}, "rule.value"),
        ({"field": "has_failed_since_last_purchase", "op": "eq", "value": 1}, "rule.value"),
    ],
)
def test_invalid_rules_name_the_path_of_the_bad_part(rule: dict[str, Any], path: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule)
    assert path in {f["field"] for f in caught.value.fields}


def _nested(depth: int) -> dict[str, Any]:
    rule: dict[str, Any] = {"field": "purchase_count", "op": "gte", "value": 1}
    for _ in range(depth):
        rule = {"all": [rule]}
    return rule


def test_rules_nest_five_groups_deep_and_hold_fifty_conditions_at_most() -> None:
    parse_rule(_nested(5))
    with pytest.raises(RuleError, match="5 groups deep"):
        parse_rule(_nested(6))
    condition = {"field": "refund_count", "op": "eq", "value": 0}
    parse_rule({"any": [condition] * 50})
    with pytest.raises(RuleError, match="50 conditions"):
        parse_rule({"any": [condition] * 51})


async def test_a_bad_rule_is_422_with_the_path_and_nothing_is_created(
    app_client: httpx.AsyncClient, account: str, session_factory: SessionFactory
) -> None:
    bad = {
        "all": [
            SPEC_EXAMPLE["all"][0],
            SPEC_EXAMPLE["all"][1],
            {"any": [{"field": "total_spent", "currency": "usd", "op": "gte", "value": "lots"}]},
        ]
    }
    response = await app_client.post(
        f"/v1/accounts/{account}/segments",
        json={"name": "VIP", "rule": bad},
        headers=platform_headers,
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert "rule.all[2].any[0].value" in fields_of(response)
    assert "VIP" not in await counts(session_factory)


async def test_create_custom_segment_computes_members_and_count_at_once(
    app_client: httpx.AsyncClient,
    account: str,
    session_factory: SessionFactory,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    match = await add_contact(
        f,
        purchase_count=3,
        last_purchase_at=NOW - 5 * DAY,
        total_spent={"usd": 25000},
        country="US",
    )
    canadian = await add_contact(
        f,
        purchase_count=3,
        last_purchase_at=NOW - 5 * DAY,
        total_spent={"usd": 25000},
        country="CA",
    )
    by_domain = await add_contact(
        f,
        email="a@kiln.example",
        purchase_count=5,
        last_purchase_at=NOW - 59 * DAY,
        total_spent={"usd": 10},
    )
    too_old = await add_contact(
        f, purchase_count=5, last_purchase_at=NOW - 61 * DAY, total_spent={"usd": 99999}
    )
    no_country = await add_contact(
        f, purchase_count=3, last_purchase_at=NOW, total_spent={"usd": 20000}
    )
    response = await app_client.post(
        f"/v1/accounts/{account}/segments",
        json={"name": "  Loyal regulars  ", "rule": SPEC_EXAMPLE},
        headers=platform_headers,
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"] == "Loyal regulars" and body["kind"] == "custom" and body["key"] is None
    assert body["member_count"] == 3 and body["platform_list_id"] is None
    assert body["rule"] == SPEC_EXAMPLE
    assert (await memberships(f))["Loyal regulars"] == {match, by_domain, no_country}
    assert canadian not in (await memberships(f))["Loyal regulars"] and too_old

    listed = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    assert [s["name"] for s in listed["segments"]][-1] == "Loyal regulars"


async def test_builtins_cannot_be_changed_or_deleted(
    app_client: httpx.AsyncClient, account: str
) -> None:
    listed = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    builtin_id = listed["segments"][0]["id"]
    url = f"/v1/accounts/{account}/segments/{builtin_id}"
    put = await app_client.put(
        url, json={"name": "Mine", "rule": _nested(1)}, headers=platform_headers
    )
    assert put.status_code == 409 and put.json()["error"]["code"] == "builtin_segment"
    delete = await app_client.delete(url, headers=platform_headers)
    assert delete.status_code == 409
    assert (
        await app_client.delete(f"/v1/accounts/{account}/segments/999999", headers=platform_headers)
    ).status_code == 404


async def test_updating_a_rule_moves_members_and_renaming_keeps_them(
    app_client: httpx.AsyncClient,
    account: str,
    session_factory: SessionFactory,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    one = await add_contact(f, purchase_count=1)
    three = await add_contact(f, purchase_count=3)
    created = (
        await app_client.post(
            f"/v1/accounts/{account}/segments",
            json={"name": "Some", "rule": {"field": "purchase_count", "op": "gte", "value": 1}},
            headers=platform_headers,
        )
    ).json()
    before = await versions(f)
    url = f"/v1/accounts/{account}/segments/{created['id']}"
    response = await app_client.put(
        url,
        json={"name": "Many", "rule": {"field": "purchase_count", "op": "gte", "value": 2}},
        headers=platform_headers,
    )
    assert response.status_code == 200 and response.json()["member_count"] == 1
    assert (await memberships(f))["Many"] == {three}
    after = await versions(f)
    assert after[one] == before[one] + 1 and after[three] == before[three]


async def test_names_are_unique_and_an_account_has_at_most_fifty_custom_segments(
    app_client: httpx.AsyncClient, account: str
) -> None:
    url = f"/v1/accounts/{account}/segments"
    rule = {"field": "purchase_count", "op": "gte", "value": 1}
    for n in range(50):
        response = await app_client.post(
            url, json={"name": f"S{n}", "rule": rule}, headers=platform_headers
        )
        assert response.status_code == 201
    over = await app_client.post(url, json={"name": "S50", "rule": rule}, headers=platform_headers)
    assert over.status_code == 409 and over.json()["error"]["code"] == "segment_limit_reached"
    listed = (await app_client.get(url, headers=platform_headers)).json()["segments"]
    victim = next(s for s in listed if s["name"] == "S3")
    assert (
        await app_client.delete(f"{url}/{victim['id']}", headers=platform_headers)
    ).status_code == 204
    taken = await app_client.post(url, json={"name": "S4", "rule": rule}, headers=platform_headers)
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "segment_name_taken"
    builtin_name = await app_client.post(
        url, json={"name": "Stripe - All Customers", "rule": rule}, headers=platform_headers
    )
    assert builtin_name.status_code == 409
    assert (
        await app_client.post(url, json={"name": "S50", "rule": rule}, headers=platform_headers)
    ).status_code == 201


async def test_members_are_paged_with_a_cursor_and_show_activity(
    app_client: httpx.AsyncClient,
    account: str,
    session_factory: SessionFactory,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    ids = [
        await add_contact(f, name=f"Buyer {n}", purchase_count=2, last_purchase_at=NOW - n * DAY)
        for n in range(5)
    ]
    await add_contact(f, purchase_count=0)
    listed = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    repeat = next(s for s in listed["segments"] if s["key"] == "repeat")
    url = f"/v1/accounts/{account}/segments/{repeat['id']}/members"
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if cursor:
            params["cursor"] = cursor
        response = await app_client.get(url, params=params, headers=platform_headers)
        assert response.status_code == 200
        seen += response.json()["members"]
        cursor = response.json()["next_cursor"]
        pages += 1
        if cursor is None:
            break
    assert pages == 3 and len(seen) == len(ids)
    assert seen[0]["name"] == "Buyer 0" and seen[0]["purchase_count"] == 2
    assert seen[0]["stripe_customer_ids"] == []
    assert seen[1]["last_purchase_at"].startswith("2026-11-25T12:00:00")
    bad = await app_client.get(url, params={"cursor": "nonsense!"}, headers=platform_headers)
    assert bad.status_code == 422


async def test_members_list_the_stripe_customer_ids_of_each_contact(
    app_client: httpx.AsyncClient, account: str, session_factory: SessionFactory
) -> None:
    from stripesync.models import StripeCustomer

    contact = await add_contact(session_factory, purchase_count=1)
    async with transaction(session_factory) as session:
        for stripe_id in ("cus_B", "cus_A"):
            session.add(
                StripeCustomer(
                    account_id=account,
                    livemode=False,
                    stripe_id=stripe_id,
                    contact_id=contact,
                    observed_at=NOW,
                    digest="d" * 64,
                )
            )
    listed = (
        await app_client.get(f"/v1/accounts/{account}/segments", headers=platform_headers)
    ).json()
    first = next(s for s in listed["segments"] if s["key"] == "first_time")
    members = (
        await app_client.get(
            f"/v1/accounts/{account}/segments/{first['id']}/members", headers=platform_headers
        )
    ).json()["members"]
    assert members[0]["stripe_customer_ids"] == ["cus_A", "cus_B"]


async def test_preview_counts_permitted_contacts_matching_a_rule_without_storing_anything(
    app_client: httpx.AsyncClient,
    account: str,
    session_factory: SessionFactory,
    frozen: time_machine.Coordinates,
) -> None:
    f = session_factory
    for n in range(12):
        await add_contact(f, purchase_count=n % 3, country="US" if n % 2 else "CA")
    await add_contact(f, purchase_count=2, country="US", consent_state="pending")
    response = await app_client.post(
        f"/v1/accounts/{account}/segments/preview",
        json={
            "rule": {
                "all": [
                    {"field": "purchase_count", "op": "gte", "value": 1},
                    {"field": "country", "op": "eq", "value": "us"},
                ]
            }
        },
        headers=platform_headers,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["member_count"] == 4 and len(body["sample"]) == 4
    assert all(m["purchase_count"] >= 1 for m in body["sample"])
    bad = await app_client.post(
        f"/v1/accounts/{account}/segments/preview",
        json={"rule": {"not": {}}},
        headers=platform_headers,
    )
    assert bad.status_code == 422 and "rule.not" in fields_of(bad)


async def test_deleting_a_custom_segment_takes_members_off_its_list_and_bumps_them(
    app_client: httpx.AsyncClient, account: str, session_factory: SessionFactory
) -> None:
    f = session_factory
    member = await add_contact(f, purchase_count=2)
    other = await add_contact(f, purchase_count=0)
    url = f"/v1/accounts/{account}/segments"
    rule = {"field": "purchase_count", "op": "gte", "value": 2}
    synced = (
        await app_client.post(url, json={"name": "Synced", "rule": rule}, headers=platform_headers)
    ).json()
    local = (
        await app_client.post(url, json={"name": "Local", "rule": rule}, headers=platform_headers)
    ).json()
    async with transaction(f) as session:  # what the sync engine records once the list exists
        segment = await session.get(Segment, int(synced["id"]))
        assert segment is not None
        segment.platform_list_id = "list-uuid-1"
    before = await versions(f)

    assert (
        await app_client.delete(f"{url}/{synced['id']}", headers=platform_headers)
    ).status_code == 204
    assert (
        await app_client.delete(f"{url}/{local['id']}", headers=platform_headers)
    ).status_code == 204

    after = await versions(f)
    assert after[member] == before[member] + 2 and after[other] == before[other]
    found = await memberships(f)
    assert "Synced" not in found and "Local" not in found
    names = [
        s["name"] for s in (await app_client.get(url, headers=platform_headers)).json()["segments"]
    ]
    assert "Synced" not in names and "Local" not in names
    async with session_factory() as session:
        rows = (
            await session.execute(
                select(Segment.name, Segment.deleted_at, Segment.platform_list_id).where(
                    Segment.kind == "custom"
                )
            )
        ).all()
    # The synced one stays as a tombstone until the sync engine has deleted its list.
    assert [(r.name, r.deleted_at is not None, r.platform_list_id) for r in rows] == [
        ("Synced", True, "list-uuid-1")
    ]
    from stripesync.segments.service import forget_segment, segments_awaiting_list_removal

    async with transaction(f) as session:
        pending = await segments_awaiting_list_removal(session, account)
        assert [s.platform_list_id for s in pending] == ["list-uuid-1"]
        await forget_segment(session, pending[0].id)
    async with transaction(f) as session:
        assert await segments_awaiting_list_removal(session, account) == []
