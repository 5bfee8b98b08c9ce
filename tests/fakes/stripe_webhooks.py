"""A stateful fake Stripe for end-to-end tests: Connect OAuth, list endpoints over stored
objects, `GET /v1/events`, and SIGNED webhook delivery the way Stripe does it.

A real HTTP server on 127.0.0.1 (random port), run in a thread of the test process
(`with FakeStripeConnect(secret=...) as stripe: stripe.url`). Unlike tests/fakes/stripe.py
(a generated, read-only history for import benchmarks), objects here are added by the test,
so the test knows exactly what each merchant's Stripe holds and can compute what the
service should end up with.

- `POST /oauth/token` (`authorization_code`, single-use codes from `authorize()`),
  `POST /oauth/deauthorize`.
- `GET /v1/customers`, `/v1/charges`, `/v1/checkout/sessions`, `/v1/subscriptions`,
  `/v1/customers/{id}`, `/v1/events` (`delivery_success=false`: events not delivered yet,
  whether still retrying or dropped): newest first, `limit`, `starting_after`,
  `created[gte|gt|lt|lte]`, `has_more`; each needs the `Stripe-Account` header.
- Webhooks: `emit()` stores the object and an event; a delivery thread POSTs it to
  `webhook_url`, signed with a fresh timestamp per attempt, several at a time in shuffled
  order, some twice (`duplicate_rate`), retrying every non-2xx or connection error with
  backoff until it is delivered. `drop_rate` (or `drop_next`) events are never attempted:
  only a reconciler reading `/v1/events?delivery_success=false` can recover them.
"""

from __future__ import annotations

import json
import random
import secrets
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from stripesync.webhooks.signature import signature_header

API_VERSION = "2024-06-20"
RESOURCES = {
    "/v1/customers": "customer",
    "/v1/charges": "charge",
    "/v1/checkout/sessions": "checkout.session",
    "/v1/subscriptions": "subscription",
    "/v1/events": "event",
}


@dataclass
class Delivery:
    """One event's delivery to the webhook endpoint."""

    event: dict[str, Any]
    dropped: bool = False
    delivered: bool = False
    attempts: int = 0
    duplicates_left: int = 0
    next_at: float = 0.0
    in_flight: bool = False
    statuses: list[int] = field(default_factory=list)  # 0 = connection failed


@dataclass
class StripeAccountData:
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # kind -> id -> obj
    events: list[str] = field(default_factory=list)  # event ids in creation order


class FakeStripeConnect:
    def __init__(
        self,
        *,
        secret: str,
        webhook_url: str | None = None,
        seed: int = 0,
        duplicate_rate: float = 0.1,
        drop_rate: float = 0.0,
        concurrency: int = 4,
        retry_base: float = 0.3,
        retry_max: float = 3.0,
    ) -> None:
        self.secret = secret
        self.webhook_url = webhook_url
        self.duplicate_rate = duplicate_rate
        self.drop_rate = drop_rate
        self.concurrency = concurrency
        self.retry_base = retry_base
        self.retry_max = retry_max
        self.random = random.Random(seed)
        self.lock = threading.RLock()
        self.accounts: dict[str, StripeAccountData] = {}
        self.deliveries: dict[str, Delivery] = {}  # by event id, in creation order
        self.codes: dict[str, str] = {}  # OAuth code -> stripe account
        self.tokens_issued: list[str] = []
        self.requests: Counter[str] = Counter()  # path -> count
        self.paused = False
        self.drop_next = 0
        self._server: ThreadingHTTPServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeStripeConnect:
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency)
        self._thread = threading.Thread(target=self._deliver_loop, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeStripeConnect:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL for `stripe_api_base` (the client appends /v1/...)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # --- the merchant's side -----------------------------------------------------------------

    def authorize(self, stripe_account: str) -> str:
        """The merchant pressed "Connect" on Stripe's page: a single-use code for the callback."""
        code = "ac_" + secrets.token_hex(12)
        with self.lock:
            self.codes[code] = stripe_account
            self.accounts.setdefault(stripe_account, StripeAccountData())
        return code

    def put(self, stripe_account: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store (or replace) an object without any event: history the import reads."""
        with self.lock:
            data = self.accounts.setdefault(stripe_account, StripeAccountData())
            data.objects.setdefault(obj["object"], {})[obj["id"]] = obj
        return obj

    def emit(
        self,
        stripe_account: str,
        event_type: str,
        obj: dict[str, Any],
        *,
        created: int | None = None,
    ) -> dict[str, Any]:
        """Store the object and an event about it; the delivery thread posts it."""
        event = {
            "id": "evt_" + uuid.uuid4().hex[:24],
            "object": "event",
            "api_version": API_VERSION,
            "account": stripe_account,
            "created": created if created is not None else int(time.time()),
            "livemode": bool(obj.get("livemode", False)),
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
            "data": {"object": obj},
        }
        with self.lock:
            self.put(stripe_account, obj)
            data = self.accounts[stripe_account]
            data.objects.setdefault("event", {})[event["id"]] = event
            data.events.append(event["id"])
            dropped = self.drop_next > 0 or self.random.random() < self.drop_rate
            if self.drop_next > 0:
                self.drop_next -= 1
            duplicates = 1 if self.random.random() < self.duplicate_rate else 0
            self.deliveries[event["id"]] = Delivery(
                event, dropped=dropped, duplicates_left=duplicates, next_at=time.monotonic()
            )
        return event

    # --- what the test reads -----------------------------------------------------------------

    def delivery_report(self) -> dict[str, int]:
        with self.lock:
            values = list(self.deliveries.values())
            return {
                "events": len(values),
                "delivered": sum(d.delivered for d in values),
                "dropped": sum(d.dropped for d in values),
                "attempts": sum(d.attempts for d in values),
                "refused": sum(1 for d in values for s in d.statuses if not 200 <= s < 300),
                "duplicates_sent": sum(
                    max(0, sum(1 for s in d.statuses if 200 <= s < 300) - 1) for d in values
                ),
            }

    def event_ids(self, stripe_account: str | None = None) -> list[str]:
        with self.lock:
            return [
                eid
                for eid, d in self.deliveries.items()
                if stripe_account is None or d.event["account"] == stripe_account
            ]

    def all_delivered_or_dropped(self) -> bool:
        with self.lock:
            return all(
                (d.delivered and d.duplicates_left == 0) or d.dropped
                for d in self.deliveries.values()
            )

    # --- webhook delivery --------------------------------------------------------------------

    def _deliver_loop(self) -> None:
        assert self._pool is not None
        while not self._stop.wait(0.05):
            if self.paused or not self.webhook_url:
                continue
            now = time.monotonic()
            with self.lock:
                due = [
                    d
                    for d in self.deliveries.values()
                    if not d.dropped
                    and not d.in_flight
                    and (not d.delivered or d.duplicates_left > 0)
                    and d.next_at <= now
                ]
                self.random.shuffle(due)  # Stripe promises no order
                for d in due:
                    d.in_flight = True
            for d in due:
                try:
                    self._pool.submit(self._attempt, d)
                except RuntimeError:  # shutting down
                    return

    def _attempt(self, delivery: Delivery) -> None:
        assert self.webhook_url is not None
        body = json.dumps(delivery.event).encode()
        headers = {
            "Stripe-Signature": signature_header(self.secret, int(time.time()), body),
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
        }
        try:
            status = httpx.post(
                self.webhook_url, content=body, headers=headers, timeout=10
            ).status_code
        except httpx.HTTPError:
            status = 0
        with self.lock:
            delivery.attempts += 1
            delivery.statuses.append(status)
            delivery.in_flight = False
            if 200 <= status < 300:
                if delivery.delivered:
                    delivery.duplicates_left -= 1
                delivery.delivered = True
                delivery.event["pending_webhooks"] = 0
                delivery.next_at = time.monotonic() + self.random.uniform(0.05, 0.5)
            else:
                failures = sum(1 for s in delivery.statuses if not 200 <= s < 300)
                backoff = min(self.retry_base * 2 ** (failures - 1), self.retry_max)
                delivery.next_at = time.monotonic() + backoff * self.random.uniform(0.8, 1.2)

    # --- HTTP --------------------------------------------------------------------------------

    def handle(
        self, method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.lock:
            self.requests[path] += 1
            if not headers.get("authorization"):
                return 401, _error("invalid_request_error", "api_key_missing")
            if path == "/oauth/token" and method == "POST":
                return self._token({k: v[0] for k, v in parse_qs(body.decode()).items()})
            if path == "/oauth/deauthorize" and method == "POST":
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                return 200, {"stripe_user_id": form.get("stripe_user_id")}
            account = headers.get("stripe-account")
            if method != "GET":
                return 404, _error("invalid_request_error", "resource_missing")
            if not account or account not in self.accounts:
                return 403, _error("invalid_request_error", "account_invalid")
            data = self.accounts[account]
            if path.startswith("/v1/customers/"):
                obj = data.objects.get("customer", {}).get(path.rsplit("/", 1)[1])
                if obj is None:
                    return 404, _error("invalid_request_error", "resource_missing")
                return 200, obj
            kind = RESOURCES.get(path)
            if kind is None:
                return 404, _error("invalid_request_error", "resource_missing")
            return self._list(data, kind, path, query)

    def _token(self, form: dict[str, str]) -> tuple[int, Any]:
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type", "error_description": "grant type"}
        account = self.codes.pop(form.get("code", ""), None)
        if account is None:
            return 400, {"error": "invalid_grant", "error_description": "code used or expired"}
        token = "sk_test_connected_" + secrets.token_hex(8)
        self.tokens_issued.append(token)
        return 200, {
            "access_token": token,
            "refresh_token": "rt_" + secrets.token_hex(8),
            "token_type": "bearer",
            "stripe_user_id": account,
            "stripe_publishable_key": "pk_test_" + secrets.token_hex(8),
            "livemode": False,
            "scope": "read_only",
        }

    def _list(
        self, data: StripeAccountData, kind: str, path: str, query: dict[str, str]
    ) -> tuple[int, Any]:
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return 400, _error("invalid_request_error", "parameter_invalid_integer")
        items = list(data.objects.get(kind, {}).values())
        if kind == "checkout.session" and query.get("status") not in (None, "complete"):
            items = [o for o in items if o.get("status") == query["status"]]
        if kind == "event" and query.get("delivery_success") is not None:
            wanted = query["delivery_success"] == "true"
            items = [o for o in items if self.deliveries[o["id"]].delivered == wanted]
        for op, test in (
            ("gte", lambda c, v: c >= v),
            ("gt", lambda c, v: c > v),
            ("lt", lambda c, v: c < v),
            ("lte", lambda c, v: c <= v),
        ):
            bound = query.get(f"created[{op}]")
            if bound is not None:
                items = [o for o in items if test(int(o["created"]), int(bound))]
        items.sort(key=lambda o: (int(o["created"]), o["id"]), reverse=True)
        after = query.get("starting_after")
        if after is not None:
            ids = [o["id"] for o in items]
            if after not in ids:
                # Stripe pages from the object's position even if it left the filter;
                # the tests never move objects out of a filter mid-listing.
                return 400, _error("invalid_request_error", "resource_missing")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return 200, {"object": "list", "data": page, "has_more": len(items) > limit, "url": path}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripeConnect
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = self.fake.handle(self.command, self.path, headers, body)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = _serve
    do_POST = _serve


def _error(kind: str, code: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": code.replace("_", " ")}}


# --- objects as Stripe sends them (API version 2024-06-20, the fields our code reads) -------


def customer(
    cid: str, email: str | None, created: int, *, name: str | None = None, country: str = "US"
) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "customer",
        "created": created,
        "email": email,
        "name": name,
        "address": {"country": country},
        "livemode": False,
        "metadata": {},
        "deleted": False,
    }


def charge(
    chid: str,
    *,
    customer_id: str | None,
    email: str | None,
    amount: int,
    created: int,
    succeeded: bool = True,
    amount_refunded: int = 0,
    currency: str = "usd",
) -> dict[str, Any]:
    return {
        "id": chid,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount if succeeded else 0,
        "amount_refunded": amount_refunded,
        "billing_details": {"address": {"country": "US"}, "email": email, "name": None},
        "captured": succeeded,
        "created": created,
        "currency": currency,
        "customer": customer_id,
        "invoice": None,
        "livemode": False,
        "paid": succeeded,
        "payment_intent": "pi_" + chid.removeprefix("ch_"),
        "receipt_email": None,
        "refunded": amount_refunded >= amount > 0,
        "status": "succeeded" if succeeded else "failed",
    }
