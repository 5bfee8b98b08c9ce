"""Property: for random activity and random valid rules, the SQL membership equals the
plain Python reference evaluator (tests/segments/reference.py)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete, select

from stripesync.db import SessionFactory, transaction
from stripesync.models import Account, Contact, ContactSegment
from stripesync.segments import repository, service
from stripesync.segments.rules import parse_rule
from tests.segments.conftest import NOW
from tests.segments.reference import matches

# Few distinct days, so contacts often sit exactly on a rule's boundary (or a tick off it).
DAYS = [0, 30, 60, 90, 120, 400]
TICK = timedelta(microseconds=1)
DOMAINS = ["bluefern.example", "kiln.example", "glaze.example"]
COUNTRIES = ["US", "CA", "GB"]
STATUSES = ["active", "trialing", "past_due", "canceled", "none"]
CURRENCIES = ["usd", "eur", "jpy"]
AMOUNTS = [0, 1, 999, 1000, 20000, 50000, 60000]
TIME_FIELDS = [
    "first_purchase_at",
    "last_purchase_at",
    "last_failed_at",
    "last_refund_at",
    "customer_created_at",
]

moments = st.builds(
    lambda days, nudge: NOW - timedelta(days=days) + nudge,
    st.sampled_from(DAYS),
    st.sampled_from([timedelta(0), timedelta(0), TICK, -TICK]),
)

contacts = st.fixed_dictionaries(
    {
        "consent_state": st.sampled_from(["confirmed", "implied", "pending", "none", "declined"]),
        "purchase_count": st.integers(0, 4),
        "refund_count": st.integers(0, 2),
        "total_spent": st.dictionaries(st.sampled_from(CURRENCIES), st.sampled_from(AMOUNTS)),
        "email_domain": st.sampled_from(DOMAINS),
        "country": st.none() | st.sampled_from(COUNTRIES),
        "subscription_status": st.sampled_from(STATUSES),
        "has_failed_since_last_purchase": st.booleans(),
        **{field: st.none() | moments for field in TIME_FIELDS},
    }
)


def _compare_ops() -> st.SearchStrategy[str]:
    return st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"])


conditions = st.one_of(
    st.builds(
        lambda f, op, v: {"field": f, "op": op, "value": v},
        st.sampled_from(["purchase_count", "refund_count"]),
        _compare_ops(),
        st.integers(0, 4),
    ),
    st.builds(
        lambda f, op, v: {"field": f, "op": op, "value": v},
        st.sampled_from(["purchase_count", "refund_count"]),
        st.sampled_from(["in", "not_in"]),
        st.lists(st.integers(0, 4), min_size=1, max_size=3),
    ),
    st.builds(
        lambda c, op, v: {"field": "total_spent", "currency": c, "op": op, "value": v},
        st.sampled_from(CURRENCIES),
        _compare_ops(),
        st.sampled_from(AMOUNTS),
    ),
    st.builds(
        lambda f, op, v: {"field": f, "op": op, "value": v},
        st.sampled_from(TIME_FIELDS),
        st.sampled_from(["within_days", "not_within_days"]),
        st.sampled_from(DAYS),
    ),
    st.builds(
        lambda f, op, v: {"field": f, "op": op, "value": v.isoformat()},
        st.sampled_from(TIME_FIELDS),
        st.sampled_from(["before", "after"]),
        moments,
    ),
    st.builds(
        lambda f, op: {"field": f, "op": op},
        st.sampled_from([*TIME_FIELDS, "country"]),
        st.sampled_from(["is_null", "is_not_null"]),
    ),
    st.builds(
        lambda op, v: {"field": "email_domain", "op": op, "value": v},
        _compare_ops(),
        st.sampled_from(DOMAINS),
    ),
    st.builds(
        lambda op, v: {"field": "country", "op": op, "value": v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(COUNTRIES), min_size=1),
    ),
    st.builds(
        lambda op, v: {"field": "country", "op": op, "value": v.lower()},
        _compare_ops(),
        st.sampled_from(COUNTRIES),
    ),
    st.builds(
        lambda op, v: {"field": "subscription_status", "op": op, "value": v},
        st.sampled_from(["eq", "ne"]),
        st.sampled_from(STATUSES),
    ),
    st.builds(
        lambda op, v: {"field": "has_failed_since_last_purchase", "op": op, "value": v},
        st.sampled_from(["eq", "ne"]),
        st.booleans(),
    ),
)

rules = st.recursive(
    conditions,
    lambda children: st.one_of(
        st.builds(lambda xs: {"all": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda xs: {"any": xs}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda x: {"not": x}, children),
    ),
    max_leaves=8,
)


def _depth(rule: dict[str, Any]) -> int:
    for key in ("all", "any"):
        if key in rule:
            return 1 + max(_depth(r) for r in rule[key])
    if "not" in rule:
        return 1 + _depth(rule["not"])
    return 0


async def _check(
    factory: SessionFactory, n: int, people: list[dict[str, Any]], rule_json: dict[str, Any]
) -> None:
    account_id = f"acc_prop_{n}"
    rule = parse_rule(rule_json)
    async with transaction(factory) as session:
        session.add(Account(id=account_id, name="Prop", owner_email="o@prop.example"))
        await session.flush()
        rows = [
            Contact(account_id=account_id, email=f"p{i}@{p['email_domain']}", **p)
            for i, p in enumerate(people)
        ]
        session.add_all(rows)
        await session.flush()
        ids = [row.id for row in rows]
    try:
        expected = {cid for cid, p in zip(ids, people, strict=True) if matches(p, rule, NOW)}
        async with transaction(factory) as session:
            created = await service.create_custom(session, account_id, "Prop", rule_json)
        async with factory() as session:
            stored = set(
                (
                    await session.scalars(
                        select(ContactSegment.contact_id).where(
                            ContactSegment.segment_id == int(created.id)
                        )
                    )
                ).all()
            )
            count, _ = await repository.preview(session, account_id, rule, now=NOW, sample=1)
        assert stored == expected, rule_json
        assert created.member_count == count == len(expected)
    finally:
        async with transaction(factory) as session:
            await session.execute(delete(Account).where(Account.id == account_id))


async def test_sql_membership_equals_the_reference_evaluator(
    session_factory: SessionFactory, frozen: object
) -> None:
    loop = asyncio.get_running_loop()
    examples = iter(range(10**6))

    @settings(
        max_examples=150,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(people=st.lists(contacts, min_size=1, max_size=40), rule_json=rules)
    def check(people: list[dict[str, Any]], rule_json: dict[str, Any]) -> None:
        if _depth(rule_json) > 5:
            return
        future = asyncio.run_coroutine_threadsafe(
            _check(session_factory, next(examples), people, rule_json), loop
        )
        future.result(timeout=60)

    await asyncio.to_thread(check)
