"""`stripesync dev` on a fresh machine: nothing configured, embedded servers, clean stop.

Runs the real command in a subprocess with an empty data dir and no STRIPESYNC_ settings
at all, as a new developer would after `git clone && make dev`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from stripesync.embedded import stop_postgres
from stripesync.webhooks.signature import signature_header

STARTUP_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class DevProcess:
    """`stripesync dev` in its own session, its output collected line by line."""

    def __init__(self, data_dir: Path, port: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRIPESYNC_")}
        env["STRIPESYNC_DATA_DIR"] = str(data_dir)
        self.port = port
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stripesync.cli", "dev", "--port", str(port)],
            env=env,
            cwd=data_dir.parent,  # no .env file there
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def banner_value(self, label: str, timeout: float = STARTUP_TIMEOUT) -> str:
        """The value printed after `label` in the start-up banner (waits for it)."""
        pattern = re.compile(rf"^\s+{re.escape(label)}\s+(\S+)")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if match := pattern.match(line):
                    return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail(f"`stripesync dev` printed no {label!r}:\n{self.output}")


@pytest.fixture
def data_dir() -> Iterator[Path]:
    # Short path: unix socket paths (Postgres, Redis) are limited to ~100 bytes.
    root = Path(tempfile.mkdtemp(prefix="ssdev-"))
    yield root / "var"
    stop_postgres(root / "var" / "postgres")  # only does anything if the test failed
    shutil.rmtree(root, ignore_errors=True)


def _signed_event(secret: str, account: str) -> tuple[str, bytes, dict[str, str]]:
    event_id = f"evt_{uuid.uuid4().hex[:24]}"
    body = json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "account": account,
            "created": int(time.time()),
            "livemode": False,
            "type": "customer.created",
            "data": {"object": {"id": "cus_dev_1", "object": "customer", "email": None}},
        }
    ).encode()
    headers = {
        "Stripe-Signature": signature_header(secret, int(time.time()), body),
        "Content-Type": "application/json",
    }
    return event_id, body, headers


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # exited; only its parent's reaping waits
    except psutil.NoSuchProcess:
        return True


def test_dev_starts_everything_processes_a_webhook_and_stops_cleanly(data_dir: Path) -> None:
    dev = DevProcess(data_dir, _free_port())
    try:
        ops_token = dev.banner_value("ops token")
        webhook_secret = dev.banner_value("webhook secret")
        api = dev.banner_value("API")
        assert api == f"http://127.0.0.1:{dev.port}"
        assert "database         postgresql://" in dev.output, "embedded Postgres, not a URL"
        assert "redis            unix://" in dev.output, "embedded Redis, not a URL"

        # The printed secrets are the ones kept in the data dir for the next start.
        kept = (data_dir / "dev-secrets.env").read_text()
        assert f"STRIPESYNC_OPS_API_TOKEN={ops_token}\n" in kept
        assert f"STRIPESYNC_STRIPE_WEBHOOK_SECRETS={webhook_secret}\n" in kept

        with httpx.Client(base_url=api, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").json() == {
                "ready": True,
                "checks": {"postgres": "ok", "redis": "ok"},
            }
            event_id, body, headers = _signed_event(webhook_secret, "acct_nobody_knows")
            response = client.post("/webhooks/stripe", content=body, headers=headers)
            assert response.status_code in (200, 202), response.text

            # The worker, not this test, moves the event on: unknown account → ignored.
            auth = {"Authorization": f"Bearer {ops_token}"}
            deadline = time.monotonic() + 20
            state = None
            while time.monotonic() < deadline:
                events = client.get("/v1/ops/events", headers=auth).json()["events"]
                state = next((e["state"] for e in events if e["id"] == event_id), None)
                if state == "ignored":
                    break
                time.sleep(0.2)
            assert state == "ignored", f"event state {state!r}\n{dev.output}"

        # Everything dev started: API, worker, embedded Redis, and the Postgres postmaster
        # (pgserver detaches it, so it is found through its pid file).
        parent = psutil.Process(dev.process.pid)
        started = parent.children(recursive=True)
        postmaster_pid = int((data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        started.append(psutil.Process(postmaster_pid))
        names = " ".join(" ".join(p.cmdline()) for p in started)
        for expected in ("serve", "worker", "redis-server", "postgres"):
            assert expected in names

        dev.process.send_signal(signal.SIGINT)
        assert dev.process.wait(timeout=30) == 0, dev.output
        dev._reader.join(timeout=5)
        assert "stripesync dev stopped." in dev.output
        left = [p for p in started if not _gone(p)]
        assert not left, f"still running after Ctrl-C: {[p.cmdline() for p in left]}"
        assert not (data_dir / "postgres" / "postmaster.pid").exists()
        assert not (data_dir / "redis" / "redis.sock").exists()
    finally:
        if dev.process.poll() is None:
            os.killpg(dev.process.pid, signal.SIGKILL)
            dev.process.wait()
