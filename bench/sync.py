"""Sync benchmark: `make bench-sync` (see README, "Benchmarks").

The real flow, in a fresh PostgreSQL database of its own: an account with 3 custom
segments asks for a sync when they are created (segments/service.py; the connect hook does
too), and that sync (the setup sync: `sync.tasks.sync_account_job`, exactly what the worker
runs) creates their platform lists and our custom fields while the account has no contacts
yet. Then 100,000 direct-mode contacts (implied consent) in 4 distinct list sets over the
3 segments arrive (inserted straight into the database, server-side generate_series, as an
import would leave them), and ONE sync job (the bulk sync, timed) pushes them to the local
fake Constant Contact (tests/fakes/constant_contact.py, run as a process of its own) that
enforces 4 requests/s per API key and takes a fixed time per imported row. Our side goes
through the real shared Redis limiter at 4 requests/s.

Reported (bench/results/sync.json and .md):
- platform requests, excluding activity status polls: in total (setup sync + bulk sync)
  and per 1,000 contacts (target: at most 10 in total: lists, custom fields and bulk
  imports, nothing per contact), and each sync's own;
- status polls, 429s received (must be 0: the limiter keeps us under the fake's limit);
- wall time of each sync job; the bulk sync's against the fake's own processing time for
  the imports (rows x seconds per row + its fixed delay): the floor set by the platform
  (the platform works on the imports side by side), what is beyond the last import's
  acceptance plus that floor, and against its requests at the rate limit;
- the bulk sync's timeline: when each import reached the fake, when the fake was done
  with it, when it was polled and when it was settled, from the job's start;
- peak RSS of the process running the sync (the setup is server-side SQL);
- CPU seconds of the process running the sync and of the fake during the bulk sync job: a
  measure of each side's own work that a busy machine does not inflate as much as wall
  time (PostgreSQL's work is in neither).

Settings: STRIPESYNC_BENCH_DATABASE_URL (admin URL, default postgresql://postgres@127.0.0.1:5432/postgres),
STRIPESYNC_BENCH_REDIS_URL (default redis://127.0.0.1:6379/0). The database is dropped at
the end (--keep to keep it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from cryptography.fernet import Fernet
from sqlalchemy import text
from sqlalchemy.engine import make_url

from stripesync.cli import migrate
from stripesync.config import Settings, to_asyncpg_url
from stripesync.db import create_engine, create_session_factory, transaction
from stripesync.kit import crypto
from stripesync.kit.queue import create_redis
from stripesync.models import Account
from stripesync.sync.tasks import sync_account_job

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
ACCOUNT = "acc_bench_sync"
SEGMENTS = ("Bench A", "Bench B", "Bench C")
# Contact g is in A always, plus B when g % 4 in (1, 3) and C when g % 4 in (2, 3):
# 4 distinct list sets {A}, {A,B}, {A,C}, {A,B,C} of 25,000 contacts each.
SETUP_SQL = [
    """
INSERT INTO contacts (account_id, email, name, email_domain, country, consent_state)
SELECT :a, 'person' || g || '@d' || (g % 20) || '.example', 'Person ' || g,
       'd' || (g % 20) || '.example', (ARRAY['US','CA','GB',NULL])[1 + g % 4], 'implied'
FROM generate_series(1, :contacts) AS g
""",
    """
INSERT INTO contact_segments (contact_id, segment_id)
SELECT c.id, s.id FROM contacts c JOIN segments s ON s.account_id = c.account_id
WHERE c.account_id = :a AND (
    s.name = 'Bench A'
    OR (s.name = 'Bench B' AND c.id % 4 IN (1, 3))
    OR (s.name = 'Bench C' AND c.id % 4 IN (2, 3)))
""",
]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of another process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _start_fake(rps: int, seconds_per_row: float, completed_after: float) -> tuple[Any, str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.fakes.constant_contact",
            "--port",
            "0",
            "--rps",
            str(rps),
            "--seconds-per-import-row",
            str(seconds_per_row),
            "--completed-after",
            str(completed_after),
            "--no-bodies",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"fake did not start: {line!r}")
    return proc, line.split(" ", 1)[1]


async def _create_account(settings: Settings) -> None:
    """The account and its custom segments as the API leaves them: no platform list yet
    (the sync their creation asks for makes them)."""
    engine = create_engine(settings, pool_size=2)
    async with transaction(create_session_factory(engine)) as session:
        session.add(
            Account(
                id=ACCOUNT,
                name="Bench shop",
                owner_email="owner@bench.example",
                cc_access_token_encrypted=crypto.encrypt(settings, "bench-access"),
                cc_refresh_token_encrypted=crypto.encrypt(settings, "bench-refresh"),
            )
        )
        await session.flush()
        for name in SEGMENTS:
            await session.execute(
                text(
                    "INSERT INTO segments (account_id, name, kind, rule)"
                    " VALUES (:a, :n, 'custom', NULL)"
                ),
                {"a": ACCOUNT, "n": name},
            )
    await engine.dispose()


async def _insert_contacts(settings: Settings, contacts: int) -> None:
    """The contacts and their segment memberships, as an import leaves them: lagging."""
    engine = create_engine(settings, pool_size=2)
    async with transaction(create_session_factory(engine)) as session:
        for sql in SETUP_SQL:
            await session.execute(text(sql), {"a": ACCOUNT, "contacts": contacts})
    async with engine.connect() as conn:
        await conn.execute(text("COMMIT"))
        await conn.execute(text("VACUUM ANALYZE contacts"))
        await conn.execute(text("VACUUM ANALYZE contact_segments"))
    await engine.dispose()


def _requests(log: list[dict[str, Any]]) -> dict[str, Any]:
    """What one sync cost the platform: requests (status polls apart), polls and 429s."""
    polls = [r for r in log if r["method"] == "GET" and "/activities/" in r["path"]]
    calls = [r for r in log if r not in polls]
    by_path: dict[str, int] = {}
    for r in calls:
        key = f"{r['method']} {r['path']}"
        by_path[key] = by_path.get(key, 0) + 1
    return {
        "requests_excluding_polls": len(calls),
        "status_polls": len(polls),
        "responses_429": sum(1 for r in log if r["status"] == 429),
        "requests_by_endpoint": by_path,
    }


def _timeline(
    log: list[dict[str, Any]],
    activities: list[dict[str, Any]],
    batches: list[Any],
    start: float,
    start_wall: float,
) -> list[dict[str, Any]]:
    """Each import of the bulk sync, in seconds from the job's start: recorded (its batch
    row, just before it is sent), accepted by the fake, done at the fake, polled, and when
    it was settled (the batch row's `finished_at`: when the poll that saw the end came
    back; its contacts were marked synced ahead of it, or from then on).

    The fake's clock is the machine's monotonic clock, as is ours; the batch rows' times
    are wall-clock times of the same machine."""
    rows = {b.activity_id: b for b in batches}
    out = []
    for activity in sorted(activities, key=lambda a: a["created"]):
        if activity["kind"] != "contacts_json_import" or activity["created"] < start:
            continue
        batch = rows.get(activity["activity_id"])
        polls = [
            r["at"] - start
            for r in log
            if r["method"] == "GET" and r["path"].endswith(activity["activity_id"])
        ]
        out.append(
            {
                "rows": activity["rows"],
                "recorded_s": round(batch.created_at.timestamp() - start_wall, 2)
                if batch
                else None,
                "accepted_s": round(activity["created"] - start, 2),
                "done_at_fake_s": round(activity["done_at"] - start, 2),
                "polls_s": [round(p, 2) for p in polls],
                "settled_s": round(batch.finished_at.timestamp() - start_wall, 2)
                if batch and batch.finished_at
                else None,
            }
        )
    return out


async def _sync(ctx: dict[str, Any], fake: Any, fake_url: str) -> dict[str, Any]:
    """One sync job, timed, with what it cost the platform and the CPU of each side."""
    http: httpx.AsyncClient = ctx["http"]
    before = len((await http.get(f"{fake_url}/_fake/requests")).json())
    start, start_wall = time.monotonic(), time.time()
    cpu0, fake_cpu0 = _cpu_seconds(), _process_cpu_seconds(fake.pid)
    result = await sync_account_job(ctx, ACCOUNT, poll_interval=0.25)
    wall = time.monotonic() - start
    cpu, fake_cpu = _cpu_seconds() - cpu0, _process_cpu_seconds(fake.pid) - fake_cpu0
    log = (await http.get(f"{fake_url}/_fake/requests")).json()[before:]
    state = (await http.get(f"{fake_url}/_fake/state")).json()
    async with ctx["engine"].connect() as conn:
        batches = (
            await conn.execute(
                text("SELECT activity_id, created_at, finished_at FROM sync_batches")
            )
        ).all()
    return {
        **_requests(log),
        "job_result": result,
        "wall_seconds": round(wall, 2),
        "cpu_seconds_sync_process": round(cpu, 2),
        "cpu_seconds_fake": round(fake_cpu, 2),
        "timeline": _timeline(log, state["activity_times"], batches, start, start_wall),
        "contacts_on_fake": state["contacts"],
        # Other work on the machine slows every measure: report how busy it was.
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    admin_url = to_asyncpg_url(args.database_url)
    name = f"stripesync_bench_sync_{uuid.uuid4().hex[:8]}"
    admin = make_url(admin_url)
    conn = await asyncpg.connect(
        host=admin.host, port=admin.port, user=admin.username, database=admin.database
    )
    await conn.execute(f'CREATE DATABASE "{name}"')
    db_url = admin.set(database=name).render_as_string(hide_password=False)
    fake, fake_url = _start_fake(args.rps, args.seconds_per_row, args.completed_after)
    try:
        await asyncio.to_thread(migrate, db_url)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=db_url,
            redis_url=args.redis_url,
            encryption_keys=Fernet.generate_key().decode(),
            cc_api_base=fake_url,
            cc_client_id=f"bench-{uuid.uuid4().hex[:8]}",  # a limiter budget of its own
            cc_requests_per_second=args.rps,
            log_level="WARNING",
        )
        await _create_account(settings)
        engine = create_engine(settings, pool_size=4)
        redis = create_redis(args.redis_url)
        async with httpx.AsyncClient() as http:
            ctx = {
                "settings": settings,
                "session_factory": create_session_factory(engine),
                "engine": engine,
                "redis": redis,
                "http": http,
                "job_try": 1,
            }
            # The sync that creating the segments (or connecting) asks for: lists, fields.
            setup_sync = await _sync(ctx, fake, fake_url)
            t0 = time.monotonic()
            await _insert_contacts(settings, args.contacts)
            insert_seconds = time.monotonic() - t0
            rss_before = _peak_rss_mb()
            # A second apart, as the contacts of an import arrive well after the setup sync:
            # the bulk sync starts with the limiter's window empty, as it would.
            await asyncio.sleep(max(0.0, 1.0 - insert_seconds))
            bulk_sync = await _sync(ctx, fake, fake_url)
        await redis.aclose()
        async with engine.connect() as conn2:
            synced = await conn2.scalar(
                text(
                    "SELECT count(*) FROM contacts"
                    " WHERE account_id = :a AND synced_version = version AND sync_state = 'ok'"
                ),
                {"a": ACCOUNT},
            )
        await engine.dispose()
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        if not args.keep:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    requests = setup_sync["requests_excluding_polls"] + bulk_sync["requests_excluding_polls"]
    imports = bulk_sync["requests_by_endpoint"].get("POST /v3/activities/contacts_json_import", 0)
    # The fake works on activities side by side (each finishes its own time after it was
    # accepted): the longest one is the floor; their sum is what a one-at-a-time run costs.
    per_import = args.contacts / max(imports, 1) * args.seconds_per_row + args.completed_after
    fake_sum = imports * args.completed_after + args.contacts * args.seconds_per_row
    wall = bulk_sync["wall_seconds"]
    timeline = bulk_sync["timeline"]
    last_accepted = max((t["accepted_s"] for t in timeline), default=None)
    return {
        "contacts": args.contacts,
        "list_sets": 4,
        # Both syncs: what the 100,000 contacts cost the account, lists and fields included.
        "platform_requests_excluding_polls": requests,
        "platform_requests_per_1000_contacts": round(requests / (args.contacts / 1000), 3),
        "contacts_on_fake": bulk_sync["contacts_on_fake"],
        "contacts_synced_ok": synced,
        "setup_sync": setup_sync,
        "bulk_sync": bulk_sync,
        # The bulk sync's wall time against the platform's floors.
        "wall_seconds": wall,
        "fake_processing_longest_import_seconds": round(per_import, 2),
        "fake_processing_sum_seconds": round(fake_sum, 2),
        "overhead_over_longest_seconds": round(wall - per_import, 2),
        # Where the time beyond the platform goes: before the last import reached the
        # fake, and after the imports ended there (polls that see the end, settling).
        "last_accepted_seconds": last_accepted,
        "overhead_over_last_accepted_plus_longest_seconds": round(
            wall - last_accepted - per_import, 2
        )
        if last_accepted is not None
        else None,
        "after_last_done_seconds": round(wall - max(t["done_at_fake_s"] for t in timeline), 2)
        if timeline
        else None,
        "first_settled_to_end_seconds": round(wall - min(t["settled_s"] for t in timeline), 2)
        if timeline and all(t["settled_s"] is not None for t in timeline)
        else None,
        # Every request, polls included, shares the 4/s budget.
        "rate_limit_floor_seconds": round(
            (bulk_sync["requests_excluding_polls"] + bulk_sync["status_polls"]) / args.rps, 2
        ),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "rss_before_sync_mb": round(rss_before, 1),
        "fake": {
            "requests_per_second": args.rps,
            "seconds_per_import_row": args.seconds_per_row,
            "completed_after": args.completed_after,
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "load_average_1min": bulk_sync["load_average_1min"],
    }


def _endpoints(by_path: dict[str, int]) -> str:
    return ", ".join(f"{n} `{k}`" for k, n in sorted(by_path.items()))


def _markdown(r: dict[str, Any]) -> str:
    setup, bulk = r["setup_sync"], r["bulk_sync"]
    walls = r["wall_seconds_all_runs"]
    rss = ", ".join(f"{x} MB" for x in r["peak_rss_mb_all_runs"])
    loads = ", ".join(str(x) for x in r["load_average_1min_all_runs"])
    setup_walls = ", ".join(f"{w} s" for w in r["setup_wall_seconds_all_runs"])
    cpu = f"{bulk['cpu_seconds_sync_process']} s / {bulk['cpu_seconds_fake']} s"
    over_last = r["overhead_over_last_accepted_plus_longest_seconds"]
    first_settled = r["first_settled_to_end_seconds"]
    total = r["platform_requests_excluding_polls"]
    setup_calls = f"{setup['requests_excluding_polls']} / {setup['status_polls']}"
    setup_calls += f" / {setup['responses_429']}"
    bulk_calls = f"{bulk['requests_excluding_polls']} / {bulk['status_polls']}"
    bulk_calls += f" / {bulk['responses_429']}"
    timeline = "\n".join(
        f"| {i + 1} | {t['rows']:,} | {t['recorded_s']} | {t['accepted_s']} |"
        f" {t['done_at_fake_s']} | {', '.join(str(p) for p in t['polls_s'])} |"
        f" {t['settled_s']} |"
        for i, t in enumerate(bulk["timeline"])
    )
    return f"""# Sync benchmark (`make bench-sync`)

An account with 3 custom segments; the sync their creation asks for (the setup sync)
creates their platform lists and our custom fields. Then {r["contacts"]:,} direct-mode
contacts (implied consent) in {r["list_sets"]} distinct list sets arrive, and one sync job
(the bulk sync) pushes them. Fake Constant Contact at {r["fake"]["requests_per_second"]}
requests/s taking {r["fake"]["seconds_per_import_row"]} s per imported row +
{r["fake"]["completed_after"]} s per activity. Median of {len(walls)} runs by the bulk sync's
wall time (figures of that run unless "every run").

| measure | value |
|---|---|
| platform requests in total, setup + bulk sync (excluding status polls) | **{total}** |
| per 1,000 contacts | {r["platform_requests_per_1000_contacts"]} |
| contacts on the fake / synced ok | {r["contacts_on_fake"]:,} / {r["contacts_synced_ok"]:,} |
| setup sync: requests / status polls / 429s | {setup_calls} |
| setup sync: wall time (every run) | {setup["wall_seconds"]} s ({setup_walls}) |
| bulk sync: requests / status polls / 429s | {bulk_calls} |
| **bulk sync: wall time** | **{r["wall_seconds"]} s** |
| bulk sync: wall time, every run | {", ".join(f"{w} s" for w in walls)} |
| load average (1 min) after each bulk sync, {r["machine"]["cpus"]} CPUs | {loads} |
| the fake's processing, longest import | {r["fake_processing_longest_import_seconds"]} s |
| the fake's processing, all imports one after another | {r["fake_processing_sum_seconds"]} s |
| bulk sync: wall time beyond the longest import | {r["overhead_over_longest_seconds"]} s |
| bulk sync: the last import accepted by the fake at | {r["last_accepted_seconds"]} s |
| bulk sync: wall time beyond the last import accepted + the longest import | {over_last} s |
| bulk sync: from the last import done at the fake to the end | {r["after_last_done_seconds"]} s |
| bulk sync: from the first import settled to the job's end | {first_settled} s |
| bulk sync: all its requests (polls too) at the rate limit | {r["rate_limit_floor_seconds"]} s |
| bulk sync: CPU of the sync process / of the fake | {cpu} |
| peak RSS of the sync process (every run) | {r["peak_rss_mb"]} MB ({rss}) |
| RSS before the bulk sync | {r["rss_before_sync_mb"]} MB |

Setup sync: {_endpoints(setup["requests_by_endpoint"])}.
Bulk sync: {_endpoints(bulk["requests_by_endpoint"])}.

Bulk sync timeline, seconds from the job's start (recorded: the transaction that checks
the import's permission and writes its batch row began, just before it is sent; accepted:
the request reached the fake; done: the fake finished it; settled: the poll that saw it
end came back, and the transaction that had marked its contacts synced ahead of that poll
then committed); the job ended at {r["wall_seconds"]} s:

| import | rows | recorded | accepted | done at the fake | polled | settled |
|---:|---:|---:|---:|---:|---|---:|
{timeline}
"""


def _one_run_command(args: argparse.Namespace) -> list[str]:
    command = [sys.executable, __file__, "--one-run", "--contacts", str(args.contacts)]
    command += ["--database-url", args.database_url, "--redis-url", args.redis_url]
    command += ["--rps", str(args.rps), "--seconds-per-row", str(args.seconds_per_row)]
    command += ["--completed-after", str(args.completed_after)]
    return command + (["--keep"] if args.keep else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "STRIPESYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("STRIPESYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
    )
    parser.add_argument("--contacts", type=int, default=100_000)
    parser.add_argument("--rps", type=int, default=4)
    parser.add_argument("--seconds-per-row", type=float, default=0.0001)
    parser.add_argument("--completed-after", type=float, default=1.0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument(
        "--runs", type=int, default=3, help="fresh runs; the one with the median wall time is kept"
    )
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        # One of the runs below: its measures on the last line of output.
        print(json.dumps(asyncio.run(run(args))))
        return
    results = []
    for _ in range(args.runs):
        # Each run in a process of its own (peak RSS is that run's), on a fresh database.
        output = subprocess.check_output(_one_run_command(args), cwd=REPO, text=True)
        results.append(json.loads(output.strip().splitlines()[-1]))
    results.sort(key=lambda r: r["wall_seconds"])
    result = results[len(results) // 2]
    result["wall_seconds_all_runs"] = [r["wall_seconds"] for r in results]
    result["peak_rss_mb_all_runs"] = [r["peak_rss_mb"] for r in results]
    result["load_average_1min_all_runs"] = [r["load_average_1min"] for r in results]
    result["setup_wall_seconds_all_runs"] = [r["setup_sync"]["wall_seconds"] for r in results]
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    (out / "sync.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "sync.md").write_text(_markdown(result))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
