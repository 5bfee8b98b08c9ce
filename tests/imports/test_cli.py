"""`stripesync import --account ID` follows a running import to its end; `stripesync jobs`
lists jobs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from stripesync.imports.tasks import import_history

from .conftest import ACCOUNT, Env

ROOT = Path(__file__).resolve().parents[2]


def cli_env(database_url: str, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "STRIPESYNC_DATABASE_URL": database_url,
        "STRIPESYNC_REDIS_URL": redis_url,
        "COLUMNS": "160",
    }


async def test_import_command_follows_the_job_to_its_end_and_jobs_lists_it(
    env: Env, job_ctx: dict[str, Any], database_url: str, redis_url: str
) -> None:
    _, job_id = await env.connect()
    command = [sys.executable, "-m", "stripesync.cli", "import", "--account", ACCOUNT]
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=ROOT,
        env=cli_env(database_url, redis_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    # Run the worker's part only once the command follows the job: started earlier, the
    # import could end before the command looks, and it would start a new one instead.
    assert process.stdout is not None
    seen = b""
    while b"following import job" not in seen:
        line = await asyncio.wait_for(process.stdout.readline(), 60)
        assert line, seen.decode()
        seen += line
    await import_history(job_ctx, ACCOUNT)  # the worker's part, here in the test
    out, _ = await asyncio.wait_for(process.communicate(), 60)
    text = (seen + out).decode()
    assert process.returncode == 0, text
    assert f"following import job {job_id}" in text
    assert f"job {job_id}: succeeded" in text
    assert "objects/s" in text and "imported: charges" in text

    listed = subprocess.run(
        [sys.executable, "-m", "stripesync.cli", "jobs", "--account", ACCOUNT],
        cwd=ROOT,
        env=cli_env(database_url, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert job_id in listed.stdout and "succeeded" in listed.stdout


def test_import_command_without_a_connection_says_so(database_url: str, redis_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "stripesync.cli", "import", "--account", "acc_none"],
        cwd=ROOT,
        env=cli_env(database_url, redis_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "no Stripe connection" in result.stdout
