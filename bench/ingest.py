"""Webhook ingestion benchmark: `make bench-ingest` (see README, "Benchmarks").

Runs the real `stripesync serve` against this machine's PostgreSQL (a fresh database of its
own) and Redis, and beside it bench/bare_app.py, a FastAPI endpoint that only reads the body
(same uvicorn options). wrk, a separate process, posts distinct pre-signed Stripe events to
each in turn, several rounds, and this script reports requests/s and p50/p99
acknowledgement latency (medians over the rounds), their ratio, and whether every
acknowledged event is committed in Postgres (rows counted after each run).

Signatures are made just before each run and runs are short, so all stay inside Stripe's
±300 s tolerance. The worker is not running: this measures acknowledgement only.

Settings: STRIPESYNC_BENCH_DATABASE_URL (an admin URL; default the local server's
`postgres` db), STRIPESYNC_BENCH_REDIS_URL (default redis://127.0.0.1:6379); options below.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis as redis_sync
from cryptography.fernet import Fernet

from stripesync.cli import migrate
from stripesync.config import to_asyncpg_url
from stripesync.kit.logging import configure_logging
from stripesync.webhooks.signature import signature_header

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TARGET_RATIO = 0.5


@dataclass
class Run:
    target: str  # "bare" or "ingest"
    round: int
    requests: int
    ok_2xx: int
    non_2xx: int
    socket_errors: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    rows_committed: int | None  # ingest only: stored rows of this run's event ids
    wrapped: int


def ensure_wrk() -> str:
    """Path of wrk, installing Debian's package when we are root and it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk is missing: apt-get install -y wrk", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env).returncode:
            subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True)
        found = shutil.which("wrk")
    if not found:
        sys.exit("bench-ingest needs wrk: `sudo apt-get install wrk` (Debian/Ubuntu)")
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def asyncpg_dsn(url: str) -> str:
    return "postgresql://" + to_asyncpg_url(url).split("://", 1)[1]


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def admin_sql(admin_url: str, sql: str) -> str:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        return str(await conn.execute(sql))
    finally:
        await conn.close()


async def fetch_value(url: str, sql: str, *args: object) -> object:
    conn = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def claim_redis_db(base_url: str) -> tuple[str, str]:
    """A Redis db number no test session or other bench holds (same SET NX claims as tests)."""
    client = redis_sync.Redis.from_url(base_url)
    for db in range(15, 0, -1):
        key = f"stripesync:test-db-claim:{db}"
        if client.set(key, f"bench-{os.getpid()}", nx=True, ex=3600):
            return urlunsplit(urlsplit(base_url)._replace(path=f"/{db}")), key
    sys.exit("no free Redis db number")


def wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server for {url} exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    sys.exit(f"{url} did not answer within {timeout} s")


def write_events(directory: Path, prefix: str, threads: int, per_thread: int, secret: str) -> None:
    """Distinct events, signed now, one file per wrk thread."""
    now = int(time.time())
    for tid in range(threads):
        lines = []
        for i in range(per_thread):
            body = json.dumps(
                {
                    "id": f"{prefix}_{tid}_{i}",
                    "object": "event",
                    "api_version": "2024-06-20",
                    "account": f"acct_bench_{i % 50}",
                    "created": now,
                    "livemode": False,
                    "pending_webhooks": 1,
                    "request": {"id": None, "idempotency_key": None},
                    "type": "customer.updated",
                    "data": {
                        "object": {
                            "id": f"cus_{tid}_{i}",
                            "object": "customer",
                            "email": f"customer{i}@example.com",
                            "name": "Bench Customer",
                            "metadata": {},
                        }
                    },
                },
                separators=(",", ":"),
            ).encode()
            lines.append(f"{signature_header(secret, now, body)}\t{body.decode()}\n")
        (directory / f"events-{tid}.txt").write_text("".join(lines))


def run_wrk(
    wrk: str, url: str, events_dir: Path, *, threads: int, connections: int, seconds: float
) -> dict[str, float]:
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds:g}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "wrk_events.lua"),
        url,
        "--",
        str(events_dir),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    for line in result.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            figures: dict[str, float] = json.loads(line.removeprefix("WRK_JSON "))
            return figures
    sys.exit(f"wrk printed no figures:\n{result.stdout}\n{result.stderr}")


def median(values: list[float]) -> float:
    return round(statistics.median(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs of each target")
    parser.add_argument("--seconds", type=float, default=8, help="length of one run")
    parser.add_argument("--warmup-seconds", type=float, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--max-rps", type=int, default=20_000, help="sizes the event files")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()

    wrk = ensure_wrk()
    admin_url = os.environ.get(
        "STRIPESYNC_BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_base = os.environ.get("STRIPESYNC_BENCH_REDIS_URL", "redis://127.0.0.1:6379")
    db_name = f"stripesync_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(admin_sql(admin_url, f'CREATE DATABASE "{db_name}"'))
    database_url = with_database(admin_url, db_name)
    redis_url, redis_claim = claim_redis_db(redis_base)
    workdir = Path(tempfile.mkdtemp(prefix="stripesync-bench-"))
    servers: list[subprocess.Popen[bytes]] = []
    runs: list[Run] = []
    try:
        configure_logging("console", "WARNING")
        migrate(database_url)
        redis_sync.Redis.from_url(redis_url).flushdb()
        secret = "whsec_" + secrets.token_hex(16)
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPESYNC_")}
        env.update(
            STRIPESYNC_DATABASE_URL=database_url,
            STRIPESYNC_REDIS_URL=redis_url,
            STRIPESYNC_PLATFORM_API_TOKEN=secrets.token_urlsafe(16),
            STRIPESYNC_OPS_API_TOKEN=secrets.token_urlsafe(16),
            STRIPESYNC_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
            STRIPESYNC_STRIPE_WEBHOOK_SECRETS=secret,
            STRIPESYNC_DATA_DIR=str(workdir / "var"),
            STRIPESYNC_LOG_LEVEL="WARNING",
        )
        ports = {"ingest": free_port(), "bare": free_port()}
        servers.append(
            subprocess.Popen(
                [sys.executable, "-m", "stripesync.cli", "serve", "--port", str(ports["ingest"])],
                env=env,
                cwd=workdir,
            )
        )
        servers.append(
            subprocess.Popen(
                [sys.executable, str(BENCH / "bare_app.py"), "--port", str(ports["bare"])],
                env=env,
                cwd=BENCH,
            )
        )
        wait_http(f"http://127.0.0.1:{ports['ingest']}/readyz", servers[0])
        wait_http(f"http://127.0.0.1:{ports['bare']}/openapi.json", servers[1])

        per_thread = int(args.max_rps * args.seconds / args.threads) + 1
        schedule = [("bare", -1), ("ingest", -1)]  # warm-up, not recorded
        for r in range(args.rounds):
            # Alternate the order so a drift in the shared machine's load hits both alike.
            pair = ["bare", "ingest"] if r % 2 == 0 else ["ingest", "bare"]
            schedule += [(target, r) for target in pair]

        for target, rnd in schedule:
            seconds = args.warmup_seconds if rnd < 0 else args.seconds
            prefix = f"evt_b{rnd + 1}{target[0]}{uuid.uuid4().hex[:6]}"
            events_dir = workdir / prefix
            events_dir.mkdir()
            count = int(args.max_rps * seconds / args.threads) + 1
            write_events(events_dir, prefix, args.threads, min(count, per_thread), secret)
            url = f"http://127.0.0.1:{ports[target]}"
            figures = run_wrk(
                wrk,
                url,
                events_dir,
                threads=args.threads,
                connections=args.connections,
                seconds=seconds,
            )
            shutil.rmtree(events_dir)
            rows = None
            if target == "ingest":
                rows = int(
                    asyncio.run(  # type: ignore[call-overload]
                        fetch_value(
                            database_url,
                            "SELECT count(*) FROM stripe_events WHERE id LIKE $1",
                            prefix + "\\_%",
                        )
                    )
                )
            ok = int(figures["requests"] - figures["non2xx"])
            run = Run(
                target=target,
                round=rnd,
                requests=int(figures["requests"]),
                ok_2xx=ok,
                non_2xx=int(figures["non2xx"]),
                socket_errors=int(
                    figures["connect_errors"]
                    + figures["read_errors"]
                    + figures["write_errors"]
                    + figures["timeouts"]
                ),
                rps=round(figures["requests"] / (figures["duration_us"] / 1e6), 1),
                p50_ms=round(figures["p50_us"] / 1000, 2),
                p90_ms=round(figures["p90_us"] / 1000, 2),
                p99_ms=round(figures["p99_us"] / 1000, 2),
                rows_committed=rows,
                wrapped=int(figures["wrapped"]),
            )
            label = "warm-up" if rnd < 0 else f"round {rnd + 1}"
            print(
                f"{label:8} {target:6} {run.rps:9.1f} req/s  p50 {run.p50_ms:7.2f} ms  "
                f"p99 {run.p99_ms:7.2f} ms  2xx {ok}"
                + (f"  rows {rows}" if rows is not None else "")
                + (f"  non-2xx {run.non_2xx}" if run.non_2xx else "")
                + (f"  socket errors {run.socket_errors}" if run.socket_errors else ""),
                flush=True,
            )
            if rnd >= 0:
                runs.append(run)

        enqueued = redis_sync.Redis.from_url(redis_url).zcard("arq:queue")
        stored = int(
            asyncio.run(  # type: ignore[call-overload]
                fetch_value(database_url, "SELECT count(*) FROM stripe_events")
            )
        )
        pg_version = str(asyncio.run(fetch_value(admin_url, "SHOW server_version")))
        redis_version = redis_sync.Redis.from_url(redis_url).info("server")["redis_version"]
    finally:
        for server in servers:
            if server.poll() is None:
                server.send_signal(signal.SIGINT)
        for server in servers:
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
        redis_sync.Redis.from_url(redis_url).flushdb()
        redis_sync.Redis.from_url(redis_base).delete(redis_claim)
        asyncio.run(admin_sql(admin_url, f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        shutil.rmtree(workdir, ignore_errors=True)

    report(args, runs, wrk, pg_version, redis_version, enqueued, stored)


def report(
    args: argparse.Namespace,
    runs: list[Run],
    wrk: str,
    pg_version: str,
    redis_version: str,
    enqueued: int,
    stored: int,
) -> None:
    by_target = {t: [r for r in runs if r.target == t] for t in ("bare", "ingest")}
    medians = {
        t: {
            "rps": median([r.rps for r in rs]),
            "p50_ms": median([r.p50_ms for r in rs]),
            "p90_ms": median([r.p90_ms for r in rs]),
            "p99_ms": median([r.p99_ms for r in rs]),
        }
        for t, rs in by_target.items()
    }
    ratios = [i.rps / b.rps for i, b in zip(by_target["ingest"], by_target["bare"], strict=True)]
    ratio = round(medians["ingest"]["rps"] / medians["bare"]["rps"], 3)
    committed = all(
        r.rows_committed is not None and r.rows_committed >= r.ok_2xx and r.wrapped == 0
        for r in by_target["ingest"]
    )
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    result = {
        "benchmark": "webhook ingestion: POST /webhooks/stripe, signed distinct events",
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgres": pg_version,
            "redis": redis_version,
            "load_tool": wrk_version.strip(),
        },
        "settings": {
            "rounds": args.rounds,
            "seconds_per_run": args.seconds,
            "connections": args.connections,
            "wrk_threads": args.threads,
            "uvicorn_workers": 1,
            "worker_running": False,
        },
        "median": medians,
        "ratio_ingest_to_bare": ratio,
        "ratio_per_round": [round(x, 3) for x in ratios],
        "target_ratio": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
        "every_acknowledged_event_committed": committed,
        "acknowledged_2xx_total": sum(r.ok_2xx for r in by_target["ingest"]),
        "rows_committed_total": sum(r.rows_committed or 0 for r in by_target["ingest"]),
        "rows_stored_incl_warmup": stored,
        "jobs_enqueued_incl_warmup": enqueued,
        "runs": [asdict(r) for r in runs],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    b, i = medians["bare"], medians["ingest"]
    lines = [
        "# Webhook ingestion benchmark",
        "",
        f"`make bench-ingest`, {result['generated_at']}: {os.cpu_count()} CPUs (shared), "
        f"PostgreSQL {pg_version}, Redis {redis_version}, {wrk_version.strip()}, "
        f"{args.connections} connections, {args.rounds} rounds of {args.seconds:g} s, "
        "one uvicorn process each, worker not running. Medians over the rounds.",
        "",
        "| endpoint | req/s | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|---:|",
        f"| bare FastAPI (reads body, 200) | {b['rps']:.0f} | {b['p50_ms']} | {b['p90_ms']} "
        f"| {b['p99_ms']} |",
        f"| `POST /webhooks/stripe` (verify, store, commit, enqueue) | {i['rps']:.0f} "
        f"| {i['p50_ms']} | {i['p90_ms']} | {i['p99_ms']} |",
        "",
        f"Ratio ingest/bare: **{ratio:.2f}** (target ≥ {TARGET_RATIO}; per round "
        f"{', '.join(f'{x:.2f}' for x in ratios)}) — "
        + ("met." if ratio >= TARGET_RATIO else "**missed**."),
        "",
        f"Every acknowledged event committed: **{'yes' if committed else 'NO'}** "
        f"({result['acknowledged_2xx_total']} 2xx answers, "
        f"{result['rows_committed_total']} rows with those runs' event ids).",
        "",
    ]
    (args.out / "ingest.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not committed:
        sys.exit("an acknowledged event is missing from Postgres")


if __name__ == "__main__":
    main()
