"""Import benchmark: `make bench-imports` (see README, "Benchmarks").

A local fake Stripe (tests/fakes/stripe.py, a process of its own) holds 100,000 customers
and 300,000 charges for the connected account, enforces 100 requests/s (429 +
`Stripe-Should-Retry` beyond) and adds 50 ms to every answer. The ceiling is therefore
100 req/s x 100 objects = 10,000 objects/s.

Two runs, both through the real import code (imports.runner.ImportRun: the windows, the
readers, the shared Redis budget at 100/s, the bounded page queues, the checkpoints, the
job lease) against a fresh PostgreSQL database of its own:

1. `read`: the full 400,000 objects. The appliers' transactions write the checkpoints and
   renew the lease, but do not call the activity apply functions: this measures what the
   import itself costs (reading under the budget, streaming, checkpointing) against the
   ceiling.
2. `end_to_end`: the same import with the real apply path (activity.apply_* on each page
   as a batch, the pages waiting applied together, then every contact touched finished
   once: activity, segments, opt-in, sync) on the same fake, to the end or stopped after
   `--e2e-seconds` (600); objects applied per second is what a merchant actually gets.
   The account is connected as the OAuth callback does it (built-in segments made).

Reported (bench/results/imports.json and .md): objects/s against the ceiling, wall time,
Stripe requests made (and 429s), peak RSS of the importing process (sampled every 0.2 s),
the CPU time of the importing process and of its PostgreSQL backends (so the CPU cost per
object, and the rate the machine's CPUs allow at that cost).

Settings: STRIPESYNC_BENCH_DATABASE_URL (admin URL, default
postgresql://postgres@127.0.0.1:5432/postgres), STRIPESYNC_BENCH_REDIS_URL (default
redis://127.0.0.1:6379/13). The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import redis as redis_sync
from cryptography.fernet import Fernet
from sqlalchemy.engine import make_url

from stripesync.cli import migrate
from stripesync.config import Settings, to_asyncpg_url
from stripesync.db import create_engine, create_session_factory, transaction
from stripesync.imports import repository
from stripesync.imports.runner import Deps, ImportRun, Page, new_lease_token
from stripesync.imports.service import ensure_import_job
from stripesync.kit.queue import create_redis
from stripesync.models import Account, StripeConnection
from stripesync.segments.service import ensure_builtin_segments
from stripesync.webhooks.dispatch import load_handlers

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent
CEILING_RPS = 100
LATENCY = 0.05


class CheckpointOnlyRun(ImportRun):
    """The import with its page transactions reduced to the checkpoints and the lease."""

    async def _apply_objects(self, session: Any, pages: list[Page]) -> list[Counter[str]]:
        return [Counter({f"imported.{page.window.resource}": len(page.objects)}) for page in pages]


def _cpu_ticks(pid: str) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class RssSampler:
    """Samples this process's RSS, and the CPU time of the PostgreSQL backends serving
    `database`, every 0.2 s."""

    def __init__(self, database: str) -> None:
        self.peak_kb = 0
        self.samples: list[int] = []
        self._database = database
        self._pg_first: dict[str, int] = {}
        self._pg_last: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    @staticmethod
    def rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def _sample_postgres(self, first: bool) -> None:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError, IndexError, ValueError):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if cmdline.startswith(b"postgres:") and self._database.encode() in cmdline:
                    ticks = _cpu_ticks(pid)
                    self._pg_first.setdefault(pid, ticks if first else 0)
                    self._pg_last[pid] = ticks

    @property
    def postgres_cpu_seconds(self) -> float:
        ticks = sum(self._pg_last[pid] - self._pg_first[pid] for pid in self._pg_last)
        return ticks / os.sysconf("SC_CLK_TCK")

    async def _run(self) -> None:
        while True:
            rss = self.rss_kb()
            self.samples.append(rss)
            self.peak_kb = max(self.peak_kb, rss)
            self._sample_postgres(first=False)
            await asyncio.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._sample_postgres(first=True)
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self._sample_postgres(first=False)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_fake(port: int, customers: int, charges: int, end: int) -> subprocess.Popen[bytes]:
    args = [
        sys.executable, "-m", "tests.fakes.stripe", "--port", str(port),
        "--customers", str(customers), "--charges", str(charges),
        "--checkout-sessions", "0", "--subscriptions", "0",
        "--end", str(end), "--days", "730",
        "--rate", str(CEILING_RPS), "--latency", str(LATENCY),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(args, cwd=REPO, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the fake Stripe did not start")


def fake_stats(port: int) -> dict[str, Any]:
    stats: dict[str, Any] = httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=10).json()
    return stats


async def connect(settings: Settings, account_id: str, stripe_account: str) -> str:
    factory = create_session_factory(create_engine(settings, pool_size=1))
    async with transaction(factory) as session:
        session.add(Account(id=account_id, name="Bench Pottery", owner_email="o@bench.example"))
        await session.flush()
        connection = StripeConnection(
            account_id=account_id, stripe_account_id=stripe_account, livemode=False, mode="direct"
        )
        session.add(connection)
        await session.flush()
        # As the OAuth callback's connect hook does: the built-in segments exist before the
        # import starts (sync.hooks.create_platform_lists_on_connect).
        await ensure_builtin_segments(session, account_id)
        job = await ensure_import_job(session, connection)
        return job.id


async def run_import(
    settings: Settings, job_id: str, run_class: type[ImportRun], max_seconds: float | None
) -> dict[str, Any]:
    assert settings.redis_url is not None
    engine = create_engine(settings, pool_size=20)
    factory = create_session_factory(engine)
    redis = create_redis(settings.redis_url)
    async with httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=5.0)) as http:
        deps = Deps(session_factory=factory, http=http, redis=redis, settings=settings)
        token = new_lease_token()
        async with transaction(factory) as session:
            job = await repository.claim(session, job_id, token, timedelta(seconds=60))
            assert job is not None and job.connection_id is not None
            connection = await session.get(StripeConnection, job.connection_id)
            assert connection is not None
        run = run_class(deps, job, connection, token)
        started = time.monotonic()
        cpu_before = _own_cpu_seconds()
        finished = True
        with RssSampler(make_url(settings.database_url).database or "") as rss:
            try:
                await asyncio.wait_for(run.run(), max_seconds)
            except TimeoutError:
                finished = False
        wall = time.monotonic() - started
        cpu = _own_cpu_seconds() - cpu_before
        done = sum(w.objects for w in run.windows)
        result = {
            "appliers": settings.import_appliers,
            "page_retries": run.page_retries,
            "finished": finished,
            "objects": done,
            "wall_seconds": round(wall, 2),
            "objects_per_second": round(done / wall, 1),
            "stripe_requests_by_importer": run.reader.stats.requests,
            "rate_limited_429": run.reader.stats.rate_limited,
            "windows": len(run.windows),
            "contacts_finished": run.contacts_finished,
            "finish_seconds": round(run.finish_seconds, 2),
            "cpu_seconds_importer": round(cpu, 1),
            "cpu_seconds_postgres": round(rss.postgres_cpu_seconds, 1),
            "cpu_ms_per_object": round(1000 * (cpu + rss.postgres_cpu_seconds) / max(done, 1), 3),
            "peak_rss_mb": round(rss.peak_kb / 1024, 1),
            "rss_mb_at_10_50_90_percent": [
                round(rss.samples[int(len(rss.samples) * q)] / 1024, 1)
                for q in (0.1, 0.5, 0.9)
                if rss.samples
            ],
        }
    await redis.aclose()
    await engine.dispose()
    return result


def claim_redis_db(base: str) -> str:
    client = redis_sync.Redis.from_url(base)
    for db in range(15, 0, -1):
        if client.set(f"stripesync:test-db-claim:{db}", os.getpid(), nx=True, ex=3600):
            return base.rsplit("/", 1)[0] + f"/{db}"
    raise SystemExit("no free Redis db number")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    admin = os.environ.get(
        "STRIPESYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = claim_redis_db(
        os.environ.get("STRIPESYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    name = f"stripesync_bench_imports_{uuid.uuid4().hex[:6]}"
    admin_dsn = "postgresql://" + to_asyncpg_url(admin).split("://", 1)[1]
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    db_url = make_url(to_asyncpg_url(admin)).set(database=name).render_as_string(False)
    port = free_port()
    end = int(datetime.now(UTC).timestamp()) - 3600
    fake = start_fake(port, args.customers, args.charges, end)
    results: dict[str, Any] = {}
    try:
        await asyncio.to_thread(migrate, db_url)
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            database_url=db_url,
            redis_url=redis_url,
            encryption_keys=Fernet.generate_key().decode(),
            stripe_secret_key="sk_test_bench",
            stripe_api_base=f"http://127.0.0.1:{port}",
            stripe_import_test_requests_per_second=CEILING_RPS,
            import_concurrency=args.concurrency,
            import_windows_per_list=8,
            log_format="console",
            log_level="WARNING",
        )
        load_handlers()

        job_read = await connect(settings, "acc_bench_read", "acct_bench_read")
        before = fake_stats(port)
        results["read"] = await run_import(settings, job_read, CheckpointOnlyRun, None)
        after = fake_stats(port)
        results["read"]["stripe_requests_served"] = after["requests"] - before["requests"]
        results["read"]["stripe_429_sent"] = after["rate_limited"] - before["rate_limited"]
        results["read"]["ceiling_objects_per_second"] = CEILING_RPS * 100
        results["read"]["share_of_ceiling"] = round(
            results["read"]["objects_per_second"] / (CEILING_RPS * 100), 3
        )

        await asyncio.sleep(1.1)  # a fresh 1 s window at the fake for the second account
        job_e2e = await connect(settings, "acc_bench_e2e", "acct_bench_e2e")
        before = fake_stats(port)
        results["end_to_end"] = await run_import(settings, job_e2e, ImportRun, args.e2e_seconds)
        after = fake_stats(port)
        results["end_to_end"]["stripe_requests_served"] = after["requests"] - before["requests"]
        e2e_rate = results["end_to_end"]["objects_per_second"]
        results["end_to_end"]["share_of_ceiling"] = round(e2e_rate / (CEILING_RPS * 100), 4)
        total = args.customers + args.charges
        results["end_to_end"]["projected_minutes_for_all"] = (
            round(total / e2e_rate / 60, 1) if e2e_rate else None
        )
        results["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        fake.terminate()
        fake.wait(timeout=10)
        conn = await asyncpg.connect(admin_dsn)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
        client = redis_sync.Redis.from_url(redis_url)
        client.flushdb()
        db = redis_url.rsplit("/", 1)[1]
        redis_sync.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/0").delete(
            f"stripesync:test-db-claim:{db}"
        )
    return results


def _cpu_bound(e2e: dict[str, Any], meta: dict[str, Any]) -> int:
    """Objects/s that the machine's CPUs allow at the measured CPU cost per object."""
    per_object = e2e.get("cpu_ms_per_object") or 0
    return round(meta["machine"]["cpus"] * 1000 / per_object) if per_object else 0


def _cpus_for_ceiling(e2e: dict[str, Any]) -> float:
    return round(CEILING_RPS * 100 * (e2e.get("cpu_ms_per_object") or 0) / 1000, 1)


def write_results(results: dict[str, Any], args: argparse.Namespace) -> None:
    meta = {
        "customers": args.customers,
        "charges": args.charges,
        "fake_rate_per_second": CEILING_RPS,
        "fake_latency_seconds": LATENCY,
        "import_concurrency": args.concurrency,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    out = {"setup": meta, **results}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "imports.json").write_text(json.dumps(out, indent=2) + "\n")
    read, e2e, runs = results["read"], results["end_to_end"], results["all_runs"]

    def row(name: str, r: dict[str, Any]) -> str:
        cells = [
            name,
            f"{r['objects']:,}",
            f"{r['wall_seconds']} s",
            f"{r['objects_per_second']:,}",
            f"{r['share_of_ceiling']:.2%}",
            f"{r['stripe_requests_served']:,}",
            str(r["rate_limited_429"]),
            f"{r['peak_rss_mb']} MB",
        ]
        return "| " + " | ".join(cells) + " |"

    e2e_label = "end to end (activity apply + hooks)"
    if not e2e["finished"]:
        e2e_label += f", stopped after {args.e2e_seconds:.0f} s"
    md = f"""# Import benchmark

`make bench-imports` ({meta["measured_at"]}, {meta["machine"]["cpus"]} CPUs, load average
at the end {meta["machine"]["load_average_at_end"]}). Fake Stripe: {args.customers:,}
customers and {args.charges:,} charges, {CEILING_RPS} requests/s enforced, {LATENCY * 1000:.0f} ms
added to every answer. Ceiling: {CEILING_RPS * 100:,} objects/s.

The median of {len(runs["end_to_end_objects_per_second"])} runs, each in a fresh process and
database (end-to-end objects/s of each: {runs["end_to_end_objects_per_second"]}; reading alone:
{runs["read_objects_per_second"]}; load average at the end of each:
{runs["load_average_1min_at_end"]}):

| run | objects | wall | objects/s | of ceiling | Stripe requests | 429s | peak RSS |
|---|---|---|---|---|---|---|---|
{row("read + checkpoints", read)}
{row(e2e_label, e2e)}

The first row is the import's own machinery: {read["windows"]} windows read in parallel under
the shared budget, pages streamed through bounded queues (RSS at 10/50/90% of the run:
{read["rss_mb_at_10_50_90_percent"]} MB), the checkpoints written by the appliers. The second row
adds what the objects really cost, through the same apply functions as webhooks: the pages
waiting for an applier ({e2e.get("appliers", "?")} of them) go in one transaction (up to
1,000 objects: each list's pages as one batch, its rows and links in a fixed number of
set-based statements, the contacts they touched recorded), and once the lists are read the
{e2e.get("contacts_finished", "?"):,} contacts touched are finished once each (activity
refresh, segments, sync, opt-in hooks) in {e2e.get("finish_seconds", "?")} s of the wall time.
Transactions aborted by a deadlock and applied again: {e2e.get("page_retries", "?")}. At that
rate the whole history takes about {e2e["projected_minutes_for_all"]} minutes.

Where the end-to-end time goes: CPU, not Stripe. The importing process used
{e2e.get("cpu_seconds_importer", "?")} s of CPU and its PostgreSQL backends
{e2e.get("cpu_seconds_postgres", "?")} s during the {e2e["wall_seconds"]} s run:
{e2e.get("cpu_ms_per_object", "?")} ms of CPU per object, so {meta["machine"]["cpus"]} fully
used CPUs could apply at most about {_cpu_bound(e2e, meta):,} objects/s here (the fake Stripe
and anything else on the machine come on top). The ceiling of {CEILING_RPS * 100:,} objects/s
would need about {_cpus_for_ceiling(e2e)} such CPUs.
"""
    (ROOT / "results" / "imports.md").write_text(md)
    print(md)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--charges", type=int, default=300_000)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--e2e-seconds", type=float, default=600.0)
    parser.add_argument(
        "--runs",
        type=int,
        default=3,
        help="fresh runs (a process and a database each); the median end-to-end one is kept",
    )
    parser.add_argument("--one-run", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_run:
        # One of the runs below: its measures on the last line of output.
        print(json.dumps(asyncio.run(main_async(args))))
        return
    runs = []
    for _ in range(args.runs):
        command = [
            sys.executable, __file__, "--one-run", "--customers", str(args.customers),
            "--charges", str(args.charges), "--concurrency", str(args.concurrency),
            "--e2e-seconds", str(args.e2e_seconds),
        ]  # fmt: skip
        output = subprocess.check_output(command, cwd=REPO, text=True)
        runs.append(json.loads(output.strip().splitlines()[-1]))
    runs.sort(key=lambda r: r["end_to_end"]["objects_per_second"])
    results = runs[len(runs) // 2]
    results["all_runs"] = {
        "read_objects_per_second": [r["read"]["objects_per_second"] for r in runs],
        "end_to_end_objects_per_second": [r["end_to_end"]["objects_per_second"] for r in runs],
        "end_to_end_wall_seconds": [r["end_to_end"]["wall_seconds"] for r in runs],
        "load_average_1min_at_end": [r["load_average_1min_at_end"] for r in runs],
    }
    write_results(results, args)


if __name__ == "__main__":
    main()
