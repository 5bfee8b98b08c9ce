"""The e2e world: real `stripesync serve` and `stripesync worker` processes on real Postgres
and Redis, with the outside world faked locally (Stripe, the platform, SMTP), and the
helpers that drive the scenario and check its end state.

Servers the faults restart are owned by the test: Redis always (an embedded redis-server
in a short temp dir, restarted empty), Postgres when asked (`own_postgres=True`: a pgserver
cluster of its own, stopped and started again); otherwise a database of the test's own on
the suite's Postgres server.
"""

from __future__ import annotations

import asyncio
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
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
from aiosmtpd.controller import Controller

from stripesync.cli import migrate
from stripesync.config import to_asyncpg_url
from stripesync.embedded import EmbeddedRedis, start_postgres, stop_postgres
from tests.conftest import ENCRYPTION_KEY, OPS_TOKEN, PLATFORM_TOKEN, WEBHOOK_SECRET
from tests.e2e.scenario import Merchant
from tests.fakes import constant_contact as cc_fake
from tests.fakes.constant_contact import FakeConstantContact
from tests.fakes.stripe_webhooks import FakeStripeConnect

ROOT = Path(__file__).resolve().parents[2]
RETURN_URL = "https://app.platform.example/integrations/stripe"
FINAL_EVENT_STATES = ("processed", "ignored")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dsn(url: str) -> str:
    return "postgresql://" + to_asyncpg_url(url).split("://", 1)[1]


async def wait_for(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.5
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(every)


# --- the platform: one fake Constant Contact account per access token --------------------------


class PlatformRouter:
    """Routes each request by its bearer token to that platform account's fake (each
    merchant has its own Constant Contact account), and enforces the API key's shared
    limit of `requests_per_second` across all of them, as the platform does."""

    def __init__(self, requests_per_second: int = 4) -> None:
        self.requests_per_second = requests_per_second
        self.tenants: dict[str, FakeConstantContact] = {}
        self.lock = threading.RLock()
        self.accepted: list[float] = []
        self.throttled = 0
        self._server: ThreadingHTTPServer | None = None

    def tenant(self, token: str) -> FakeConstantContact:
        with self.lock:
            if token not in self.tenants:
                self.tenants[token] = FakeConstantContact(
                    requests_per_second=10_000, processing_after=0.05, completed_after=0.3
                )
            return self.tenants[token]

    def inject_all(self, status: int, count: int, **kwargs: Any) -> None:
        for fake in list(self.tenants.values()):
            fake.inject(status, count=count, **kwargs)

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        token = headers.get("authorization", "").removeprefix("Bearer ")
        now = time.monotonic()
        with self.lock:
            recent = [t for t in self.accepted[-50:] if t > now - 1.0]
            if len(recent) >= self.requests_per_second:
                self.throttled += 1
                return 429, {"error_key": "throttled", "error_message": "Too many requests"}, {}
            self.accepted.append(now)
        return self.tenant(token).handle(method, raw_path, headers, body)

    def start(self) -> PlatformRouter:
        router = self

        class Handler(cc_fake._Handler):
            pass

        Handler.fake = router  # type: ignore[assignment]
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def lists_of(self, token: str) -> dict[str, set[str]]:
        """List name -> emails of its members on that platform account."""
        fake = self.tenant(token)
        with fake.lock:
            fake._advance()
            return {
                lst["name"]: {
                    c.email.lower()
                    for c in fake.contacts.values()
                    if lid in c.list_ids and c.status == "active"
                }
                for lid, lst in fake.lists.items()
            }

    def contacts_of(self, token: str) -> set[str]:
        fake = self.tenant(token)
        with fake.lock:
            fake._advance()
            return {c.email.lower() for c in fake.contacts.values()}


# --- SMTP ------------------------------------------------------------------------------------


class Mailbox:
    """A local SMTP server (aiosmtpd) that keeps every message; can go down and come back."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[tuple[str, EmailMessage]] = []  # (recipient, message)
        self._controller: Controller | None = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        for rcpt in envelope.rcpt_tos:
            self.messages.append((rcpt.lower(), parsed))
        return "250 OK"

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def to(self, recipients: set[str]) -> list[tuple[str, EmailMessage]]:
        return [(r, m) for r, m in self.messages if r in recipients]


def optin_link(message: EmailMessage) -> str:
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    match = re.search(r"https?://\S+/optin/([A-Za-z0-9_-]{20,})", text)
    assert match, "opt-in email without a link"
    return match.group(1)


# --- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    args: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> Proc:
        self.starts += 1
        with self.log.open("ab") as log:
            log.write(f"\n--- start #{self.starts} of {self.name} ---\n".encode())
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stripesync.cli", *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a SIGKILL reaches only it
        )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


# --- the world -------------------------------------------------------------------------------


@dataclass
class World:
    admin_url: str | None  # the suite's Postgres server; None: a cluster of the test's own
    seed: int = 1
    drop_rate: float = 0.0
    duplicate_rate: float = 0.15
    reconcile_every_minutes: int = 10
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Unix socket paths must stay short: not under pytest's long tmp paths.
        self.dir = Path(tempfile.mkdtemp(prefix="ss-e2e-"))
        self.pg_dir = self.dir / "pg"
        self.database_url = ""
        self.redis = EmbeddedRedis(self.dir / "redis")
        self.stripe = FakeStripeConnect(
            secret=WEBHOOK_SECRET,
            seed=self.seed,
            duplicate_rate=self.duplicate_rate,
            drop_rate=self.drop_rate,
        )
        self.platform = PlatformRouter()
        self.mail = Mailbox()
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.serve: Proc | None = None
        self.worker: Proc | None = None
        self.api: httpx.AsyncClient | None = None
        self._db_name = f"stripesync_e2e_{uuid.uuid4().hex[:8]}"
        self.timings: dict[str, float] = {}
        self.supervising = True
        self.redis_restarts = 0

    # --- start and stop ---

    async def start(self) -> World:
        started = time.monotonic()
        admin = self.admin_url
        if admin is None:
            admin = start_postgres(self.pg_dir)
        conn = await asyncpg.connect(dsn(admin))
        try:
            await conn.execute(f'CREATE DATABASE "{self._db_name}"')
        finally:
            await conn.close()
        from sqlalchemy.engine import make_url

        self.database_url = (
            make_url(to_asyncpg_url(admin))
            .set(database=self._db_name)
            .render_as_string(hide_password=False)
        )
        await asyncio.to_thread(migrate, self.database_url)
        self.redis.start()
        self.stripe.start()
        self.stripe.webhook_url = f"{self.base}/webhooks/stripe"
        self.platform.start()
        self.mail.start()
        env = self.env()
        self.serve = Proc("serve", ["serve", "--port", str(self.port)], env, self.dir / "serve.log")
        self.worker = Proc("worker", ["worker"], env, self.dir / "worker.log")
        self.serve.start()
        self.worker.start()
        threading.Thread(target=self._supervise, daemon=True).start()
        self.api = httpx.AsyncClient(base_url=self.base, timeout=30)
        await wait_for(self._healthy, 60, "the API to answer /healthz", every=0.2)
        self.timings["start"] = time.monotonic() - started
        return self

    def env(self) -> dict[str, str]:
        values = {
            "PYTHONPATH": str(ROOT),
            "STRIPESYNC_DATABASE_URL": self.database_url,
            "STRIPESYNC_REDIS_URL": self.redis.url,
            "STRIPESYNC_DATA_DIR": str(self.dir / "data"),
            "STRIPESYNC_PUBLIC_BASE_URL": self.base,
            "STRIPESYNC_PLATFORM_API_TOKEN": PLATFORM_TOKEN,
            "STRIPESYNC_OPS_API_TOKEN": OPS_TOKEN,
            "STRIPESYNC_ENCRYPTION_KEYS": ENCRYPTION_KEY,
            "STRIPESYNC_STRIPE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "STRIPESYNC_STRIPE_CLIENT_ID": "ca_e2e_platform",
            "STRIPESYNC_STRIPE_SECRET_KEY": "sk_test_e2e_platform_secret",
            "STRIPESYNC_STRIPE_API_BASE": self.stripe.url,
            "STRIPESYNC_STRIPE_OAUTH_AUTHORIZE_URL": self.stripe.url + "/oauth/authorize",
            "STRIPESYNC_STRIPE_OAUTH_TOKEN_URL": self.stripe.url + "/oauth/token",
            "STRIPESYNC_STRIPE_OAUTH_DEAUTHORIZE_URL": self.stripe.url + "/oauth/deauthorize",
            "STRIPESYNC_CC_API_BASE": self.platform.url,
            "STRIPESYNC_CC_TOKEN_URL": self.platform.url + cc_fake.TOKEN_PATH,
            "STRIPESYNC_CC_CLIENT_ID": "cc-e2e-client",
            "STRIPESYNC_CC_CLIENT_SECRET": "cc-e2e-secret",
            "STRIPESYNC_CC_REQUESTS_PER_SECOND": "4",
            "STRIPESYNC_SMTP_URL": self.mail.url,
            "STRIPESYNC_MAIL_FROM": "bounces@stripesync.example",
            "STRIPESYNC_ALLOWED_RETURN_URL_PREFIXES": "https://app.platform.example",
            "STRIPESYNC_LOG_FORMAT": "json",
            "STRIPESYNC_SWEEPER_GRACE_SECONDS": "1",
            "STRIPESYNC_EVENT_RETRY_BASE_SECONDS": "0.5",
            "STRIPESYNC_MAIL_RETRY_BASE_SECONDS": "2",
            "STRIPESYNC_MAIL_PER_SECOND": "50",
            "STRIPESYNC_IMPORT_LEASE_SECONDS": "5",
            # A killed worker's running jobs wait this + 10 s (arq's in-progress key) before
            # any worker may run them again: short here, so a SIGKILL test converges within
            # its two minutes (the default is 300 s). Longer work runs in 15 s slices.
            "STRIPESYNC_JOB_TIMEOUT_SECONDS": "30",
            "STRIPESYNC_STRIPE_IMPORT_TEST_REQUESTS_PER_SECOND": "200",
            "STRIPESYNC_STRIPE_RECONCILE_EVERY_MINUTES": str(self.reconcile_every_minutes),
        }
        values.update(self.extra_env)
        base = {k: v for k, v in os.environ.items() if not k.startswith("STRIPESYNC_")}
        return {**base, **values}

    def _supervise(self) -> None:
        """Restart a process that exited, as the deployment's supervisor does
        (docker-compose `restart: unless-stopped`): e.g. the worker exits when Redis goes."""
        while self.supervising:
            for proc in (self.serve, self.worker):
                if self.supervising and proc is not None and not proc.alive():
                    time.sleep(1.0)
                    if self.supervising:
                        proc.start()
            time.sleep(0.5)

    async def _healthy(self) -> bool:
        assert self.api is not None and self.serve is not None
        if not self.serve.alive():
            raise AssertionError("stripesync serve exited:\n" + self.tail("serve"))
        try:
            return (await self.api.get("/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    async def stop(self) -> None:
        self.supervising = False
        self.stripe.paused = True
        for proc in (self.worker, self.serve):
            if proc is not None:
                proc.stop()
        if self.api is not None:
            await self.api.aclose()
        self.stripe.stop()
        self.platform.stop()
        self.mail.stop()
        self.redis.stop()
        if self.admin_url is None:
            stop_postgres(self.pg_dir)
        else:
            conn = await asyncpg.connect(dsn(self.admin_url))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{self._db_name}" WITH (FORCE)')
            finally:
                await conn.close()

    def cleanup_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def tail(self, name: str, lines: int = 40) -> str:
        path = self.dir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def logs(self) -> str:
        return "".join(
            p.read_text(errors="replace") for p in (self.dir / "serve.log", self.dir / "worker.log")
        )

    # --- faults ---

    def restart_postgres(self, down_seconds: float) -> None:
        from pgserver.postgres_server import PostgresServer

        assert self.admin_url is None, "only a test-owned Postgres can be restarted"
        stop_postgres(self.pg_dir)
        # pgserver caches a handle per data dir and would not start the stopped server.
        PostgresServer._instances.pop(self.pg_dir.resolve(), None)
        time.sleep(down_seconds)
        start_postgres(self.pg_dir)

    def restart_redis_empty(self, down_seconds: float = 1.0) -> None:
        self.redis_restarts += 1
        self.redis.stop()
        for leftover in self.redis.directory.glob("*.rdb"):
            leftover.unlink()
        time.sleep(down_seconds)
        self.redis.start()

    # --- the platform API, as the platform's UI back end calls it ---

    @property
    def http(self) -> httpx.AsyncClient:
        assert self.api is not None
        return self.api

    async def connect(self, m: Merchant) -> None:
        """Register the account, (opt-in mode) activate its email, connect Stripe through
        the real authorize URL and OAuth callback."""
        h = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
        expires = (datetime.now(UTC) + timedelta(days=20)).isoformat()
        r = await self.http.put(
            f"/v1/accounts/{m.account_id}",
            headers=h,
            json={
                "name": f"Shop {m.key}",
                "owner_email": m.owner_email,
                "postal_address": "12 Kiln Lane, Portland OR 97201, USA",
                "cc_credentials": {
                    "access_token": m.cc_token,
                    "refresh_token": f"cc-refresh-{m.account_id}",
                    "expires_at": expires,
                },
            },
        )
        assert r.status_code == 201, r.text
        body: dict[str, Any] = {"mode": m.mode, "return_url": RETURN_URL}
        if m.mode == "optin":
            r = await self.http.put(
                f"/v1/accounts/{m.account_id}/optin-email",
                headers=h,
                json={
                    "subject": f"Shop {m.key}: may we keep you updated?",
                    "from_name": f"Shop {m.key}",
                    "from_email": f"hello@{m.key}.example",
                    "reply_to": f"hello@{m.key}.example",
                    "intro": "We make pots. Now and then we write about them.",
                },
            )
            assert r.status_code == 200, r.text
            r = await self.http.post(f"/v1/accounts/{m.account_id}/optin-email/activate", headers=h)
            assert r.status_code == 200, r.text
        else:
            body |= {"prior_consent_affirmed": True, "affirmed_by": "user-42"}
        r = await self.http.post(
            f"/v1/accounts/{m.account_id}/stripe/connect", headers=h, json=body
        )
        assert r.status_code == 201, r.text
        authorize = urlsplit(r.json()["authorize_url"])
        state = parse_qs(authorize.query)["state"][0]
        code = self.stripe.authorize(m.stripe_account)
        r = await self.http.get("/oauth/stripe/callback", params={"code": code, "state": state})
        assert r.status_code == 303, r.text
        location = r.headers["location"]
        assert location.startswith(RETURN_URL) and "status=connected" in location, location

    async def dashboard(self, m: Merchant) -> dict[str, Any]:
        h = {"Authorization": f"Bearer {PLATFORM_TOKEN}"}
        r = await self.http.get(f"/v1/accounts/{m.account_id}", headers=h)
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    async def wait_import(self, m: Merchant, timeout: float = 90) -> None:
        async def done() -> bool:
            block = (await self.dashboard(m)).get("import") or {}
            if block.get("state") in ("failed", "cancelled"):
                raise AssertionError(f"import ended {block}")
            return block.get("state") == "succeeded"

        await wait_for(done, timeout, f"the import of {m.account_id}")

    # --- Stripe's side ---

    async def emit(
        self,
        m: Merchant,
        events: list[tuple[str, dict[str, Any]]],
        per_second: float = 0,
        on_progress: Callable[[int], Awaitable[None]] | None = None,
    ) -> None:
        for i, (event_type, obj) in enumerate(events):
            self.stripe.emit(m.stripe_account, event_type, obj)
            if on_progress is not None:
                await on_progress(i + 1)
            if per_second:
                await asyncio.sleep(1 / per_second)

    # --- opt-in ---

    def optin_messages(self, m: Merchant) -> list[tuple[str, EmailMessage]]:
        return self.mail.to(set(m.people))

    async def answer_optin_emails(self, m: Merchant) -> dict[str, str]:
        """Every person with an email answers as the scenario says (confirm / decline / not
        at all), through the real page: GET shows the choice, POST records it."""
        answered: dict[str, str] = {}
        for rcpt, message in self.optin_messages(m):
            answer = m.people[rcpt].answer
            if answer is None or rcpt in answered:
                continue
            token = optin_link(message)
            page = await self.http.get(f"/optin/{token}")
            assert page.status_code == 200, page.text
            r = await self.http.post(f"/optin/{token}/{answer}")
            assert r.status_code == 200, r.text
            answered[rcpt] = answer
        m.answered.update(answered)
        return answered

    # --- the end state ---

    async def db(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn(self.database_url))
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    async def events_not_final(self) -> list[str]:
        stored = {r["id"]: r["state"] for r in await self.db("SELECT id, state FROM stripe_events")}
        return [eid for eid in self.stripe.event_ids() if stored.get(eid) not in FINAL_EVENT_STATES]

    async def all_events_final(self) -> bool:
        try:
            return not await self.events_not_final()
        except (OSError, asyncpg.PostgresError):  # the database is (re)starting: not yet
            return False

    def platform_diff(self, m: Merchant) -> dict[str, Any]:
        now = time.time()
        want = m.expected_lists(now)
        have = self.platform.lists_of(m.cc_token)
        diff: dict[str, Any] = {}
        for name, emails in want.items():
            got = have.get(name)
            if got is None:
                diff[name] = "list missing on the platform"
            elif got != emails:
                diff[name] = {"missing": sorted(emails - got), "unexpected": sorted(got - emails)}
        extra = self.platform.contacts_of(m.cc_token) - m.permitted(now)
        if extra:
            diff["contacts without permission"] = sorted(extra)
        return diff

    async def wait_converged(self, merchants: list[Merchant], timeout: float) -> None:
        """Every event stored and final, and every platform list as segments.md says."""
        try:
            await wait_for(self.all_events_final, timeout, "every emitted event to be processed")
            await wait_for(
                lambda: _no_diff(self, merchants), timeout, "the platform lists to converge", 1.0
            )
        except AssertionError as exc:
            missing = await self.events_not_final()
            detail = {
                "events not final": missing[:10],
                "delivery": self.stripe.delivery_report(),
                "diffs": {m.account_id: self.platform_diff(m) for m in merchants},
            }
            raise AssertionError(
                f"{exc}\n{json.dumps(detail, indent=1, default=str)[:6000]}\n"
                f"--- worker log ---\n{self.tail('worker', 60)}"
            ) from None

    async def assert_end_state(self, merchants: list[Merchant]) -> dict[str, Any]:
        """The claims of issue 9 about the end state, for each merchant; answers a summary."""
        now = time.time()
        summary: dict[str, Any] = {}
        for m in merchants:
            assert self.platform_diff(m) == {}
            # No lost event: every event Stripe emitted is stored and final, none failed.
            ids = self.stripe.event_ids(m.stripe_account)
            rows = await self.db(
                "SELECT state, count(*) AS n FROM stripe_events WHERE id = ANY($1) GROUP BY state",
                ids,
            )
            states = {r["state"]: r["n"] for r in rows}
            assert sum(states.values()) == len(ids) and set(states) <= set(FINAL_EVENT_STATES)
            # No duplicate purchase: one payment row per Stripe charge, no more, no fewer.
            paid = await self.db(
                "SELECT charge_id FROM payments WHERE account_id = $1", m.account_id
            )
            charge_ids = [r[0] for r in paid]
            assert len(charge_ids) == len(set(charge_ids)) == len(m.charges), (
                len(charge_ids),
                len(m.charges),
            )
            # Purchase counts per person equal what the charges say.
            rows = await self.db(
                "SELECT email, purchase_count, consent_state FROM contacts WHERE account_id = $1",
                m.account_id,
            )
            counts = {r["email"]: r["purchase_count"] for r in rows}
            for email in m.permitted(now):
                assert counts.get(email) == m.activity(email, now)["purchase_count"], email
            # Never re-subscribed, nobody on the platform without permission (platform_diff).
            assert self.platform.tenant(m.cc_token).resubscribe_attempts == []
            # One opt-in email per person who may be asked, none to anyone else.
            sent = Counter(r for r, _ in self.optin_messages(m))
            if m.mode == "optin":
                eligible = {e for e in m.people if m.optin_eligible(e, now)}
                assert set(sent) == eligible, sorted(set(sent) ^ eligible)
                assert max(sent.values()) == 1, sent.most_common(3)
            else:
                assert not sent
            consent = Counter(r["consent_state"] for r in rows)
            summary[m.account_id] = {
                "mode": m.mode,
                "people": len(m.people),
                "charges": len(m.charges),
                "events": len(ids),
                "optin_emails": sum(sent.values()),
                "consent": dict(consent),
                "platform_contacts": len(self.platform.contacts_of(m.cc_token)),
            }
        summary["delivery"] = self.stripe.delivery_report()
        summary["platform_throttled"] = self.platform.throttled
        summary["process_starts"] = {
            p.name: p.starts for p in (self.serve, self.worker) if p is not None
        }
        return summary


async def _no_diff(world: World, merchants: list[Merchant]) -> bool:
    return all(world.platform_diff(m) == {} for m in merchants)
