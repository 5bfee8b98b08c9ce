"""Segment benchmark: `make bench-segments` (see README, "Benchmarks").

Generates 1,000,000 contacts and 5,000,000 payments straight into a fresh PostgreSQL
database of its own (server-side generate_series), derives each contact's activity columns
from its payments with one aggregate UPDATE (what the activity feature maintains
incrementally), then times, as medians of several runs:

- full recompute, first fill: all 9 built-ins + 5 custom rules from empty memberships;
- full recompute, a day later: the same, with the clock moved one day (people move
  between recent / lapsed / refunded);
- full recompute that changes nothing (and must bump no contact version);
- preview of a 3-condition rule (count + sample).

It calls the same functions the worker and the API call (segments.membership /
segments.repository) with an explicit `now`. Results go to bench/results/segments.json.
The database is dropped at the end (--keep to keep it; --database NAME measures again on a
kept one without generating anything). The load average is recorded before and after:
the figures are only as quiet as the machine was.

Settings: STRIPESYNC_BENCH_DATABASE_URL (an admin URL; default the local server's
`postgres` db).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from stripesync.cli import migrate
from stripesync.config import to_asyncpg_url
from stripesync.db import create_session_factory, transaction
from stripesync.segments import membership, repository
from stripesync.segments.builtins import BUILTINS, DEFAULT_THRESHOLDS
from stripesync.segments.rules import parse_rule

ROOT = Path(__file__).resolve().parent
ACCOUNT = "acc_bench"
NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)

CUSTOM_RULES: dict[str, dict[str, Any]] = {
    "Loyal regulars": {
        "all": [
            {"field": "purchase_count", "op": "gte", "value": 3},
            {"field": "last_purchase_at", "op": "within_days", "value": 60},
            {
                "any": [
                    {"field": "total_spent", "currency": "usd", "op": "gte", "value": 20000},
                    {"field": "email_domain", "op": "in", "value": ["d1.example", "d2.example"]},
                ]
            },
            {"not": {"field": "country", "op": "eq", "value": "CA"}},
        ]
    },
    "Big spenders in euros": {
        "field": "total_spent",
        "currency": "eur",
        "op": "gte",
        "value": 30000,
    },
    "Failed and gone quiet": {
        "all": [
            {"field": "has_failed_since_last_purchase", "op": "eq", "value": True},
            {"field": "last_purchase_at", "op": "not_within_days", "value": 90},
        ]
    },
    "Canadians and Brits": {"field": "country", "op": "in", "value": ["CA", "GB"]},
    "New this year, never refunded": {
        "all": [
            {"field": "customer_created_at", "op": "after", "value": "2026-01-01T00:00:00Z"},
            {"field": "refund_count", "op": "eq", "value": 0},
        ]
    },
}
PREVIEW_RULE = {
    "all": [
        {"field": "purchase_count", "op": "gte", "value": 2},
        {"field": "last_purchase_at", "op": "within_days", "value": 90},
        {"field": "total_spent", "currency": "usd", "op": "gte", "value": 10000},
    ]
}

SETUP_SQL = [
    # Contacts: 90% with permission; 20 email domains; a few countries.
    """
INSERT INTO contacts (account_id, email, name, email_domain, country, consent_state,
                      customer_created_at, subscription_status)
SELECT :a, 'person' || g || '@d' || (g % 20) || '.example', 'Person ' || g,
       'd' || (g % 20) || '.example',
       (ARRAY['US','US','US','CA','GB','DE',NULL])[1 + g % 7],
       (ARRAY['confirmed','implied','confirmed','confirmed','confirmed','implied',
              'confirmed','confirmed','confirmed','pending'])[1 + g % 10],
       CAST(:now AS timestamptz)
           - make_interval(days => CAST((CAST(g AS bigint) * 7919) % 1500 AS integer)),
       (ARRAY['none','none','active','canceled','trialing','past_due'])[1 + g % 6]
FROM generate_series(1, :contacts) AS g
""",
    # Payments: 5 per contact on average (0..10), 85% succeeded, 10% failed, some refunds;
    # usd mostly, some eur and jpy (zero-decimal), spread over the last 2 years.
    """
INSERT INTO payments (account_id, livemode, charge_id, customer_id, amount, amount_refunded,
                      currency, status, created, contact_id, refunded_at)
SELECT :a, false, 'ch_' || p.n, 'cus_' || p.contact_id, p.amount,
       CASE WHEN p.r < 0.03 THEN p.amount WHEN p.r < 0.05 THEN p.amount / 2 ELSE 0 END,
       p.currency, p.status, p.created, p.contact_id,
       CASE WHEN p.r < 0.05 AND p.status = 'succeeded'
            THEN p.created + interval '3 days' END
FROM (
    SELECT row_number() OVER () AS n, c.id AS contact_id,
           500 + (random() * 30000)::int AS amount,
           (ARRAY['usd','usd','usd','usd','eur','jpy'])[1 + (random() * 5)::int] AS currency,
           CASE WHEN random() < 0.87 THEN 'succeeded' ELSE 'failed' END AS status,
           CAST(:now AS timestamptz) - make_interval(secs => random() * 63072000) AS created,
           random() AS r
    FROM contacts c
    CROSS JOIN LATERAL generate_series(1, (c.id * 2654435761 % 11)::int) AS k
    WHERE c.account_id = :a
) p
LIMIT :payments
""",
    # The activity columns of segments.md, derived from the payments in one pass.
    """
WITH per_currency AS (
    SELECT contact_id, currency, sum(amount - amount_refunded) AS spent
    FROM payments WHERE status = 'succeeded' GROUP BY contact_id, currency
),
spent AS (
    SELECT contact_id, jsonb_object_agg(currency, spent) AS total
    FROM per_currency WHERE spent > 0 GROUP BY contact_id
),
agg AS (
    SELECT contact_id,
           count(*) FILTER (WHERE counted) AS purchases,
           min(created) FILTER (WHERE counted) AS first_at,
           max(created) FILTER (WHERE counted) AS last_at,
           max(created) FILTER (WHERE status = 'failed') AS failed_at,
           count(*) FILTER (WHERE amount_refunded > 0) AS refunds,
           max(refunded_at) AS refund_at
    FROM (SELECT *, status = 'succeeded' AND amount_refunded < amount AS counted
          FROM payments) p
    GROUP BY contact_id
)
UPDATE contacts c SET
    purchase_count = agg.purchases, first_purchase_at = agg.first_at,
    last_purchase_at = agg.last_at, last_failed_at = agg.failed_at,
    has_failed_since_last_purchase = agg.failed_at IS NOT NULL
        AND (agg.last_at IS NULL OR agg.failed_at > agg.last_at),
    refund_count = agg.refunds, last_refund_at = agg.refund_at,
    total_spent = COALESCE(spent.total, '{}'::jsonb)
FROM agg LEFT JOIN spent ON spent.contact_id = agg.contact_id
WHERE c.id = agg.contact_id
""",
]


def admin_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def timed(fn: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await fn()
    return time.perf_counter() - started, result


async def admin_execute(admin_url: str, sql: str) -> Any:
    conn = await asyncpg.connect(admin_dsn(admin_url))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--payments", type=int, default=5_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--fill-runs", type=int, default=3, help="runs of the first fill (0: keep memberships)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench database")
    parser.add_argument("--database", help="measure on this kept bench database (no setup)")
    args = parser.parse_args()

    admin_url = os.environ.get(
        "STRIPESYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    name = args.database or f"stripesync_bench_segments_{uuid.uuid4().hex[:6]}"
    if not args.database:
        asyncio.run(admin_execute(admin_url, f'CREATE DATABASE "{name}"'))
    db_url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    print(f"bench database {name}")
    try:
        migrate(db_url)
        server_version = asyncio.run(admin_execute(admin_url, "SHOW server_version"))
        asyncio.run(run(args, db_url, server_version))
    finally:
        if not args.keep and not args.database:
            asyncio.run(admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def run(args: argparse.Namespace, db_url: str, server_version: str) -> None:
    # The service's engine stops statements after 30 s; generating the data takes longer.
    engine = create_async_engine(
        to_asyncpg_url(db_url), pool_size=2, connect_args={"command_timeout": 3600}
    )
    try:
        await measure(args, engine, server_version)
    finally:
        await engine.dispose()


async def measure(args: argparse.Namespace, engine: Any, server_version: str) -> None:
    factory = create_session_factory(engine)
    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": server_version,
        },
        "contacts": args.contacts,
        "load_average_before": [round(x, 2) for x in os.getloadavg()],
    }

    if args.database:
        await measure_kept(args, engine, factory, results)
        return
    print(f"generating {args.contacts:,} contacts and {args.payments:,} payments ...")
    setup_started = time.perf_counter()
    async with transaction(factory) as session:
        await session.execute(
            text(
                "INSERT INTO accounts (id, name, owner_email) VALUES (:a, 'Bench', 'o@b.example')"
            ),
            {"a": ACCOUNT},
        )
        for sql in SETUP_SQL:
            await session.execute(
                text(sql),
                {
                    "a": ACCOUNT,
                    "now": NOW,
                    "contacts": args.contacts,
                    "payments": args.payments,
                },
            )
        segment_rows = [
            {
                "key": b.key,
                "name": b.name,
                "kind": "builtin",
                "rule": b.rule(DEFAULT_THRESHOLDS),
            }
            for b in BUILTINS
        ] + [{"key": None, "name": n, "kind": "custom", "rule": r} for n, r in CUSTOM_RULES.items()]
        for row in segment_rows:
            await session.execute(
                text(
                    "INSERT INTO segments (account_id, key, name, kind, rule)"
                    " VALUES (:a, :key, :name, :kind, CAST(:rule AS jsonb))"
                ),
                {"a": ACCOUNT, **row, "rule": json.dumps(row["rule"])},
            )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE"))
        payments = (await conn.execute(text("SELECT count(*) FROM payments"))).scalar_one()
    results["payments"] = payments
    results["setup_seconds"] = round(time.perf_counter() - setup_started, 1)
    print(f"  {payments:,} payments; setup took {results['setup_seconds']} s")
    await measure_kept(args, engine, factory, results)


async def measure_kept(
    args: argparse.Namespace, engine: Any, factory: Any, results: dict[str, Any]
) -> None:
    async with factory() as session:
        results["contacts"] = await session.scalar(text("SELECT count(*) FROM contacts"))
        results["payments"] = await session.scalar(text("SELECT count(*) FROM payments"))

    async def recompute(now: datetime) -> membership.RecomputeResult:
        async with transaction(factory) as session:
            return await membership.recompute_segments(session, ACCOUNT, now=now, automation=False)

    async def version_sum() -> int:
        async with factory() as session:
            return int(await session.scalar(text("SELECT sum(version) FROM contacts")) or 0)

    async def reset_memberships() -> None:
        async with transaction(factory) as session:
            await session.execute(text("TRUNCATE contact_segments"))
            await session.execute(text("UPDATE segments SET member_count = 0"))
        async with engine.connect() as conn:  # type: ignore[union-attr]
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE contact_segments, contacts"))

    first_fill: list[float] = []
    for run in range(args.fill_runs):
        await reset_memberships()
        seconds, result = await timed(lambda: recompute(NOW))
        first_fill.append(seconds)
        print(f"  first fill run {run + 1}: {seconds:.2f} s ({result.entered:,} memberships)")
    if first_fill:
        # What autovacuum does after such a fill in service: the timed recomputes below
        # then read the steady state, not a million dead contact row versions.
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.execute(text("VACUUM ANALYZE contact_segments, contacts"))
        results["full_recompute_first_fill_seconds"] = {
            "median": round(statistics.median(first_fill), 2),
            "runs": [round(s, 2) for s in first_fill],
        }
    async with factory() as session:
        results["memberships"] = await session.scalar(text("SELECT count(*) FROM contact_segments"))

    day_later: list[float] = []
    moved: list[int] = []
    for run in range(args.runs):
        now = NOW + timedelta(days=run + 1)
        seconds, result = await timed(lambda now=now: recompute(now))  # type: ignore[misc]
        day_later.append(seconds)
        moved.append(result.contacts_changed)
        print(f"  a day later run {run + 1}: {seconds:.2f} s ({result.contacts_changed:,} moved)")
    results["full_recompute_day_later_seconds"] = {
        "median": round(statistics.median(day_later), 2),
        "runs": [round(s, 2) for s in day_later],
        "contacts_moved": moved,
    }

    unchanged: list[float] = []
    final_now = NOW + timedelta(days=args.runs)
    before = await version_sum()
    for run in range(args.runs):
        seconds, result = await timed(lambda: recompute(final_now))
        assert result.contacts_changed == 0, result
        unchanged.append(seconds)
        print(f"  no-change run {run + 1}: {seconds:.2f} s")
    assert await version_sum() == before, "a recompute that changed nothing bumped versions"
    results["full_recompute_no_change_seconds"] = {
        "median": round(statistics.median(unchanged), 2),
        "runs": [round(s, 2) for s in unchanged],
        "versions_bumped": 0,
    }

    rule = parse_rule(PREVIEW_RULE)

    async def preview() -> tuple[int, Any]:
        session: AsyncSession
        async with factory() as session:
            return await repository.preview(session, ACCOUNT, rule, now=NOW, sample=10)

    previews: list[float] = []
    for run in range(args.runs):
        seconds, (count, _) = await timed(preview)
        previews.append(seconds)
        print(f"  preview run {run + 1}: {seconds:.3f} s ({count:,} members)")
    results["preview_3_conditions_seconds"] = {
        "median": round(statistics.median(previews), 3),
        "runs": [round(s, 3) for s in previews],
        "member_count": count,
    }
    results["targets"] = {"full_recompute_seconds": 10, "preview_seconds": 1}
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out = ROOT / "results" / "segments.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
