"""A worker killed with SIGKILL in the middle of an import: another worker resumes it from
its checkpoints, and the end state equals an import that was never interrupted."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from stripesync.accounts.oauth import IMPORT_HISTORY, import_job_id
from stripesync.db import transaction
from stripesync.kit.queue import create_redis
from stripesync.models import ImportWindow, OptinEmail, Payment
from tests.conftest import ENCRYPTION_KEY
from tests.fakes.stripe import History

from .conftest import Env, contact_picture, now_history

ROOT = Path(__file__).resolve().parents[2]
HISTORY = now_history(customers=150, charges=450, checkout_sessions=10, subscriptions=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: SIGKILL reaches only it
    )


def stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def fake_args(history: History, port: int) -> list[str]:
    # Slow answers: pages apply fast, and the kill must land part-way through the import.
    return [
        "-m", "tests.fakes.stripe", "--port", str(port),
        "--customers", str(history.customers), "--charges", str(history.charges),
        "--checkout-sessions", str(history.checkout_sessions),
        "--subscriptions", str(history.subscriptions),
        "--end", str(history.end), "--days", str(history.days), "--latency", "0.3",
    ]  # fmt: skip


async def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def test_import_killed_mid_way_resumes_to_the_same_state(
    env: Env, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    logs = tmp_path / "logs.txt"
    child_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "STRIPESYNC_DATABASE_URL": database_url,
        "STRIPESYNC_REDIS_URL": redis_url,
        "STRIPESYNC_ENCRYPTION_KEYS": ENCRYPTION_KEY,
        "STRIPESYNC_STRIPE_SECRET_KEY": "sk_test_platform",
        "STRIPESYNC_STRIPE_API_BASE": f"http://127.0.0.1:{port}",
        "STRIPESYNC_DATA_DIR": str(tmp_path),
        "STRIPESYNC_LOG_FORMAT": "console",
        "STRIPESYNC_IMPORT_LEASE_SECONDS": "2",
        "STRIPESYNC_SWEEPER_GRACE_SECONDS": "1",
        "STRIPESYNC_IMPORT_CONCURRENCY": "4",
        "STRIPESYNC_IMPORT_WINDOWS_PER_LIST": "3",
        "STRIPESYNC_STRIPE_IMPORT_TEST_REQUESTS_PER_SECOND": "200",
        "STRIPESYNC_MAIL_PER_SECOND": "500",
    }
    fake = start(fake_args(HISTORY, port), child_env, logs)
    workers: list[subprocess.Popen[bytes]] = []
    redis = create_redis(redis_url)
    try:
        _, killed_job = await env.connect(
            "acc_killed", "acct_k", mode="optin", from_email="k@a.example"
        )
        conn_k = (await env.job(killed_job)).connection_id
        assert conn_k is not None
        await redis.enqueue_job(
            IMPORT_HISTORY, "acc_killed", _job_id=import_job_id("acc_killed", conn_k)
        )

        async def pages_applied() -> int:
            async with transaction(env.factory) as session:
                stmt = select(func.sum(ImportWindow.pages)).where(ImportWindow.job_id == killed_job)
                return int((await session.execute(stmt)).scalar_one() or 0)

        workers.append(start(["-m", "stripesync.cli", "worker"], child_env, logs))
        await wait_for(lambda: _at_least(pages_applied, 3), 90, "a few pages of the import")
        stop(workers[0], signal.SIGKILL)
        before = await env.job(killed_job)
        assert before.state == "running"
        done_before = await pages_applied()
        total_pages = -(-HISTORY.charges // 100) + -(-HISTORY.customers // 100)
        assert done_before < total_pages, "the kill came too late to prove anything"

        await asyncio.sleep(2.5)  # the dead worker's lease expires
        workers.append(start(["-m", "stripesync.cli", "worker"], child_env, logs))
        await wait_for(lambda: _state_is(env, killed_job, "succeeded"), 180, "the resumed import")
        # The reference: the same history imported by a worker nobody kills.
        _, whole_job = await env.connect(
            "acc_whole", "acct_w", mode="optin", from_email="w@a.example"
        )
        conn_w = (await env.job(whole_job)).connection_id
        assert conn_w is not None
        await redis.enqueue_job(
            IMPORT_HISTORY, "acc_whole", _job_id=import_job_id("acc_whole", conn_w)
        )
        await wait_for(lambda: _state_is(env, whole_job, "succeeded"), 180, "the whole import")

        async def all_sent() -> bool:
            # The uninterrupted account's emails all go out. (Sends the killed worker had
            # claimed or enqueued wait for the opt-in module's own stale-claim recovery.)
            whole_rows = await env.count(OptinEmail, account_id="acc_whole")
            return whole_rows == await env.count(OptinEmail, account_id="acc_whole", state="sent")

        await wait_for(all_sent, 90, "the opt-in emails")
    finally:
        for worker in workers:
            stop(worker)
        stop(fake)
        await redis.aclose()

    killed, whole = await env.job(killed_job), await env.job(whole_job)
    assert killed.attempts == 2 and whole.attempts == 1
    # The same people, with the same consent and the same payment activity.
    assert await contact_picture(env, "acc_killed") == await contact_picture(env, "acc_whole")
    for account in ("acc_killed", "acc_whole"):
        assert await env.count(Payment, account_id=account) == HISTORY.charges
    assert killed.report["imported"] == whole.report["imported"]
    assert killed.report["skipped"] == whole.report["skipped"]
    # No opt-in email twice: one row per person, and one message per person in the outbox.
    assert (
        await env.count(OptinEmail, account_id="acc_killed")
        == await env.count(OptinEmail, account_id="acc_whole")
        > 0
    )
    sent = Counter(
        (str(m["From"]), str(m["To"])) for m in env.outbox() if "owner@" not in str(m["To"])
    )
    assert max(sent.values()) == 1
    per_merchant = Counter(sender for sender, _ in sent)
    owner_mails = [m for m in env.outbox() if "import" in str(m["Subject"]).lower()]
    assert len(owner_mails) == 2  # one completion email per job
    k_count = sum(n for s, n in per_merchant.items() if "k@a.example" in s)
    w_count = sum(n for s, n in per_merchant.items() if "w@a.example" in s)
    assert w_count == await env.count(OptinEmail, account_id="acc_whole")
    # A message the killed worker wrote but could not mark sent stays `sending` (never
    # resent): so at least the `sent` rows, at most one per row.
    killed_sent = await env.count(OptinEmail, account_id="acc_killed", state="sent")
    assert 0 < killed_sent <= k_count <= await env.count(OptinEmail, account_id="acc_killed")


async def _at_least(check: Any, n: int) -> bool:
    return bool(await check() >= n)


async def _state_is(env: Env, job_id: str, state: str) -> bool:
    job = await env.job(job_id)
    if job.state in ("failed", "cancelled"):
        raise AssertionError(f"job ended {job.state}: {job.error}")
    return job.state == state
