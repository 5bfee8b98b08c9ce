"""The `stripesync` command: serve, worker, migrate, dev and the operator tools."""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from stripesync.config import SERVE_REQUIRES, MissingSettingError, Settings
from stripesync.kit.logging import configure_logging

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str | None = None):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    ini = Path("alembic.ini")
    if not ini.exists():
        ini = PROJECT_ROOT / "alembic.ini"
    config = Config(str(ini))
    config.set_main_option("script_location", str(ini.parent / "migrations"))
    if database_url:
        config.attributes["database_url"] = database_url
    return config


def migrate(database_url: str) -> None:
    """`alembic upgrade head` against `database_url`."""
    from alembic import command

    command.upgrade(alembic_config(database_url), "head")


def cmd_serve(args: argparse.Namespace) -> None:
    import uvicorn

    settings = Settings()
    settings.require(*SERVE_REQUIRES)
    configure_logging(settings.log_format, settings.log_level)
    uvicorn.run(
        "stripesync.app:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_config=None,
        access_log=False,
        proxy_headers=True,
    )


def cmd_worker(_: argparse.Namespace) -> None:
    from stripesync.worker import create_worker

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    create_worker(settings).run()


def cmd_migrate(_: argparse.Namespace) -> None:
    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    migrate(settings.sqlalchemy_database_url)


def cmd_rotate_keys(_: argparse.Namespace) -> None:
    """Re-encrypt every stored secret under the first STRIPESYNC_ENCRYPTION_KEYS key."""
    import asyncio

    from stripesync.db import create_engine, create_session_factory
    from stripesync.kit.crypto import rotate_encrypted_columns

    settings = Settings()
    settings.require("database_url", "encryption_keys")
    configure_logging(settings.log_format, settings.log_level)

    async def run() -> int:
        engine = create_engine(settings, pool_size=1)
        try:
            return await rotate_encrypted_columns(create_session_factory(engine), settings)
        finally:
            await engine.dispose()

    count = asyncio.run(run())
    print(f"re-encrypted {count} stored secrets under the first key")


def cmd_recompute(args: argparse.Namespace) -> None:
    """Full segment recompute now (what the hourly cron does), for one account or all."""
    import asyncio
    import json

    from stripesync.db import create_engine, create_session_factory
    from stripesync.segments import automation
    from stripesync.segments.tasks import recompute_accounts

    settings = Settings()
    configure_logging(settings.log_format, settings.log_level)
    automation.configure(settings)

    async def run() -> dict[str, object]:
        engine = create_engine(settings, pool_size=1)
        try:
            return await recompute_accounts(create_session_factory(engine), args.account)
        finally:
            await engine.dispose()

    print(json.dumps(asyncio.run(run())))


def cmd_import(args: argparse.Namespace) -> None:
    """Start the account's historical import (or follow the one running) with a live bar."""
    from stripesync.imports.cli import run_import

    settings = Settings()
    settings.require("database_url", "redis_url")
    configure_logging(settings.log_format, "WARNING")
    raise SystemExit(run_import(settings, args.account, follow_it=not args.no_follow))


def cmd_jobs(args: argparse.Namespace) -> None:
    """List jobs, newest first."""
    from stripesync.imports.cli import list_jobs

    settings = Settings()
    settings.require("database_url")
    configure_logging(settings.log_format, "WARNING")
    list_jobs(settings, args.account, args.state, args.limit)


def _dev_secrets(data_dir: Path) -> dict[str, str]:
    """Generated once into the data dir, so tokens stay the same across `dev` restarts."""
    from cryptography.fernet import Fernet

    path = data_dir / "dev-secrets.env"
    if not path.exists():
        values = {
            "STRIPESYNC_PLATFORM_API_TOKEN": secrets.token_urlsafe(32),
            "STRIPESYNC_OPS_API_TOKEN": secrets.token_urlsafe(32),
            "STRIPESYNC_ENCRYPTION_KEYS": Fernet.generate_key().decode(),
            "STRIPESYNC_STRIPE_WEBHOOK_SECRETS": "whsec_" + secrets.token_hex(24),
        }
        path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
        path.chmod(0o600)
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k: v for k, v in pairs}


def _wait_until_healthy(url: str, server: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Poll `url` until it answers 200; False if the server exits or time runs out."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _dev_banner(base: str, env: dict[str, str], data_dir: Path) -> str:
    secret = env["STRIPESYNC_STRIPE_WEBHOOK_SECRETS"].split(",")[0]
    return (
        "\nstripesync dev is running (API and worker)\n"
        f"  API              {base}  (docs at {base}/docs)\n"
        f"  Stripe webhooks  {base}/webhooks/stripe\n"
        f"  platform token   {env['STRIPESYNC_PLATFORM_API_TOKEN']}\n"
        f"  ops token        {env['STRIPESYNC_OPS_API_TOKEN']}\n"
        f"  webhook secret   {secret}\n"
        f"  database         {env['STRIPESYNC_DATABASE_URL']}\n"
        f"  redis            {env['STRIPESYNC_REDIS_URL']}\n"
        f"  mail outbox      {data_dir / 'outbox'}\n"
        f"Secrets generated into {data_dir / 'dev-secrets.env'}; a STRIPESYNC_ variable you set\n"
        "wins over them (with `stripe listen`: STRIPESYNC_STRIPE_WEBHOOK_SECRETS=its whsec_).\n"
        f"Try it: curl -H 'Authorization: Bearer <ops token>' {base}/v1/ops/events\n"
        "Ctrl-C stops everything.\n"
    )


def cmd_dev(args: argparse.Namespace) -> None:
    import logging

    from stripesync.embedded import EmbeddedRedis, start_postgres, stop_postgres

    # Started in the background by a non-interactive shell, SIGINT arrives ignored; Ctrl-C
    # and `kill -INT` must still stop everything.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    settings = Settings()
    configure_logging("console", settings.log_level)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    data_dir = settings.data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "outbox").mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("STRIPESYNC_LOG_FORMAT", "console")
    env["STRIPESYNC_DATA_DIR"] = str(data_dir)
    for key, value in _dev_secrets(data_dir).items():
        if not env.get(key):
            env[key] = value

    cleanups: list[Callable[[], None]] = []
    children: list[subprocess.Popen[bytes]] = []
    try:
        if not settings.database_url:
            pg_dir = data_dir / "postgres"
            cleanups.append(lambda: stop_postgres(pg_dir))
            env["STRIPESYNC_DATABASE_URL"] = start_postgres(pg_dir)
        if not settings.redis_url:
            embedded_redis = EmbeddedRedis(data_dir / "redis", persist=True)
            cleanups.append(embedded_redis.stop)
            env["STRIPESYNC_REDIS_URL"] = embedded_redis.start().url
        migrate(env["STRIPESYNC_DATABASE_URL"])
        exe = [sys.executable, "-m", "stripesync.cli"]
        serve = [*exe, "serve", "--host", args.host, "--port", str(args.port)]
        children.append(subprocess.Popen(serve, env=env))  # noqa: S603
        children.append(subprocess.Popen([*exe, "worker"], env=env))  # noqa: S603
        base = f"http://{args.host}:{args.port}"
        if not _wait_until_healthy(f"{base}/healthz", children[0]):
            print(f"stripesync: the API did not start on {base} (see above)", file=sys.stderr)
            raise SystemExit(1)
        print(_dev_banner(base, env, data_dir), flush=True)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        print("stripesync: a process exited; stopping the others", file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not abandon the servers half-way through stopping them.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        for cleanup in reversed(cleanups):
            cleanup()
        print("stripesync dev stopped.", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stripesync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(func=cmd_serve)

    worker = sub.add_parser("worker", help="run the arq worker and its cron jobs")
    worker.set_defaults(func=cmd_worker)

    mig = sub.add_parser("migrate", help="alembic upgrade head, then exit")
    mig.set_defaults(func=cmd_migrate)

    rotate = sub.add_parser(
        "rotate-keys", help="re-encrypt every stored secret under the first encryption key"
    )
    rotate.set_defaults(func=cmd_rotate_keys)

    recompute = sub.add_parser("recompute", help="recompute segment memberships now")
    recompute.add_argument("--account", help="only this account id (default: every account)")
    recompute.set_defaults(func=cmd_recompute)

    imp = sub.add_parser("import", help="start or follow an account's historical import")
    imp.add_argument("--account", required=True, help="the platform account id")
    imp.add_argument("--no-follow", action="store_true", help="start it and return")
    imp.set_defaults(func=cmd_import)

    jobs = sub.add_parser("jobs", help="list jobs (imports), newest first")
    jobs.add_argument("--account", help="only this account's jobs")
    jobs.add_argument("--state", choices=["queued", "running", "succeeded", "failed", "cancelled"])
    jobs.add_argument("--limit", type=int, default=20)
    jobs.set_defaults(func=cmd_jobs)

    dev = sub.add_parser("dev", help="embedded Postgres + Redis when unset, migrate, API + worker")
    dev.add_argument("--host", default="127.0.0.1")
    dev.add_argument("--port", type=int, default=8000)
    dev.set_defaults(func=cmd_dev)
    return parser


def main(argv: list[str] | None = None) -> None:
    from pydantic import ValidationError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MissingSettingError as exc:
        print(f"stripesync: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]).upper() if first["loc"] else "?"
        print(f"stripesync: invalid setting STRIPESYNC_{name}: {first['msg']}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
