"""The shared budget measured where it matters: at the platform, across processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.fakes.constant_contact import FakeConstantContact, max_in_window

ROOT = Path(__file__).resolve().parents[2]


def _spawn(
    fake: FakeConstantContact,
    redis_url: str,
    name: str,
    start_at: float,
    seconds: float,
    *extra: str,
) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.clients.hammer",
            "--api",
            fake.url,
            "--redis",
            redis_url,
            "--name",
            name,
            "--workers",
            "4",
            "--start-at",
            str(start_at),
            "--seconds",
            str(seconds),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _run_two_processes(
    fake: FakeConstantContact, redis_url: str, seconds: float, *extra: str
) -> list[int]:
    name = f"cc:test-{uuid.uuid4().hex[:8]}"
    start_at = time.time() + 3.0  # both processes import, then start together
    procs = [_spawn(fake, redis_url, name, start_at, seconds, *extra) for _ in range(2)]
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        counts.append(int(out.strip().splitlines()[-1]))
    return counts


def test_two_processes_of_four_workers_never_exceed_four_requests_in_any_second(
    redis_url: str,
) -> None:
    with FakeConstantContact(requests_per_second=4) as fake:
        counts = _run_two_processes(fake, redis_url, 5.0)
        requests = fake.api_requests()
    times = [r.at for r in requests]
    assert max_in_window(times, 1.0) <= 4
    assert [r.status for r in requests if r.status != 200] == []  # never throttled
    # Both processes got work through, and the budget was used, not starved.
    assert all(c > 0 for c in counts)
    assert sum(counts) == len(requests)
    assert len(requests) >= 16  # about 4/s over 5 s; well above what a stalled limiter gives


def test_without_the_limiter_the_same_load_is_throttled(redis_url: str) -> None:
    # The control: the check above can fail. Unlimited, the fake sees bursts and says 429.
    with FakeConstantContact(requests_per_second=4) as fake:
        _run_two_processes(fake, redis_url, 1.0, "--no-limiter")
        requests = fake.api_requests()
    assert max_in_window([r.at for r in requests], 1.0) > 4
    assert any(r.error_key == "throttled" for r in requests)
