"""Soak: a steady offered load of signed webhooks against the real `stripesync serve` and
`stripesync worker`, for a long time, watching what should stay flat.

One direct-mode merchant is connected through the real API and OAuth callback (the e2e
world of tests/e2e/harness.py: fake Stripe delivering signed webhooks, the fake platform at
4 req/s, local SMTP). Then `--rate` events per second (new payments of a rotating set of
customers, some failures and refunds) for `--minutes`. Every `--every` seconds it samples:
RSS of the serve and worker processes, Postgres connections of the service's database
(pg_stat_activity), Redis clients, arq queue depth, and events stored but not final.

A series is flat when the median of its last quarter is within 20% (plus a small absolute
slack) of the median of its first quarter. Results: bench/results/soak.json and soak.md.

    make bench-soak                       # 20 minutes
    .venv/bin/python bench/soak.py --minutes 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import asyncpg  # noqa: E402
import redis.asyncio as aioredis  # noqa: E402
from tests.e2e.harness import World, dsn, wait_for  # noqa: E402
from tests.e2e.scenario import build_merchant  # noqa: E402
from tests.fakes.stripe_webhooks import charge  # noqa: E402

RESULTS = ROOT / "bench" / "results"
# Absolute slack per series: noise that is not growth.
SLACK = {"serve_rss_mb": 8, "worker_rss_mb": 8, "pg_connections": 2, "redis_clients": 2,
         "queue_depth": 50, "events_pending": 50}  # fmt: skip


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn/arq run in the one process)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return round(total / 1024, 1)


def _children(pid: int) -> list[int]:
    try:
        raw = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    out = [int(c) for c in raw]
    for c in list(out):
        out += _children(c)
    return out


async def sample(world: World, redis: aioredis.Redis, db_name: str) -> dict[str, float]:
    assert world.serve is not None and world.worker is not None
    conn = await asyncpg.connect(dsn(world.database_url))
    try:
        pg = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1", db_name
        )
        pending = await conn.fetchval(
            "SELECT count(*) FROM stripe_events WHERE state NOT IN ('processed', 'ignored')"
        )
    finally:
        await conn.close()
    info = await redis.info("clients")
    return {
        "serve_rss_mb": rss_mb(world.serve.pid),
        "worker_rss_mb": rss_mb(world.worker.pid),
        "pg_connections": float(pg) - 1,  # not counting this sampler's own connection
        "redis_clients": float(info["connected_clients"]) - 1,
        "queue_depth": float(await redis.zcard("arq:queue")),
        "events_pending": float(pending),
    }


def verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = max(1, len(samples) // 4)
    for key in SLACK:
        series = [s[key] for s in samples]
        first, last = statistics.median(series[:q]), statistics.median(series[-q:])
        flat = last <= first * 1.2 + SLACK[key]
        out[key] = {"first_quartile_median": first, "last_quartile_median": last,
                    "min": min(series), "max": max(series), "flat": flat}  # fmt: skip
    return out


async def soak(minutes: float, rate: float, every: float, people: int) -> dict[str, Any]:
    admin = os.environ.get("STRIPESYNC_TEST_DATABASE_URL")
    world = World(admin_url=admin, duplicate_rate=0.05, seed=99)
    await world.start()
    redis = aioredis.Redis(unix_socket_path=str(world.redis.socket))
    try:
        shop = build_merchant("soak", "direct", people, seed=99)
        for obj in shop.history:
            world.stripe.put(shop.stripe_account, obj)
        await world.connect(shop)
        await world.wait_import(shop, timeout=120)
        emails = sorted(shop.people)
        rng = random.Random(1)
        db_name = world.database_url.rsplit("/", 1)[1].split("?")[0]
        samples: list[dict[str, float]] = []
        emitted = 0
        start = time.monotonic()
        end = start + minutes * 60
        next_sample = start
        while (now := time.monotonic()) < end:
            due = int((now - start) * rate) - emitted
            for _ in range(max(0, due)):
                email = emails[rng.randrange(len(emails))]
                cid = next(iter(shop.people[email].customers), None)
                ok = rng.random() > 0.1
                obj = charge(
                    f"ch_soak_{emitted:08d}", customer_id=cid, email=email,
                    amount=rng.choice((1500, 4900, 12000)), created=int(time.time()), succeeded=ok,
                )  # fmt: skip
                world.stripe.emit(
                    shop.stripe_account, "charge.succeeded" if ok else "charge.failed", obj
                )
                emitted += 1
            if now >= next_sample:
                s = await sample(world, redis, db_name)
                s["t"] = round(now - start, 1)
                s["emitted"] = emitted
                samples.append(s)
                print(json.dumps(s), flush=True)
                next_sample += every
            await asyncio.sleep(0.02)
        drained_at = time.monotonic()
        await wait_for(world.all_events_final, 300, "the backlog to drain")
        drain_seconds = round(time.monotonic() - drained_at, 1)
        report = world.stripe.delivery_report()
        conn = await asyncpg.connect(dsn(world.database_url))
        try:
            payments = await conn.fetchval(
                "SELECT count(*) FROM payments WHERE charge_id LIKE 'ch_soak_%'"
            )
        finally:
            await conn.close()
        return {
            "minutes": minutes,
            "offered_rate_per_second": rate,
            "events_emitted": emitted,
            "payments_stored": payments,
            "drain_seconds_after_load": drain_seconds,
            "delivery": report,
            "samples": samples,
            "verdict": verdict(samples),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        }
    finally:
        await redis.aclose()
        await world.stop()
        world.cleanup_dir()


def write(result: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    v = result["verdict"]
    lines = [
        "# Soak",
        "",
        f"{result['minutes']} min at {result['offered_rate_per_second']} webhooks/s offered "
        f"({result['events_emitted']} events, {result['payments_stored']} payments stored; "
        f"backlog drained {result['drain_seconds_after_load']} s after the load stopped).",
        "",
        "| series | first-quartile median | last-quartile median | min | max | flat |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in v.items():
        lines.append(
            f"| {key} | {row['first_quartile_median']} | {row['last_quartile_median']} | "
            f"{row['min']} | {row['max']} | {'yes' if row['flat'] else 'NO'} |"
        )
    (RESULTS / "soak.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--rate", type=float, default=20, help="webhooks per second offered")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    parser.add_argument("--people", type=int, default=200)
    args = parser.parse_args()
    write(asyncio.run(soak(args.minutes, args.rate, args.every, args.people)))


if __name__ == "__main__":
    main()
