"""A fake Stripe API for imports: list endpoints over a large, generated history.

Serves `/v1/customers`, `/v1/charges`, `/v1/checkout/sessions` (`status=complete`) and
`/v1/subscriptions` (`status=all`) as Stripe does: newest first, `limit` (≤ 100),
`starting_after`, `created[gte|gt|lt|lte]`, `has_more`; and `GET /v1/customers/{id}`.
It needs the `Stripe-Account` header and enforces a per-account request rate the way
Stripe does (429 with `Stripe-Should-Retry: true`), optionally adding latency to every
answer.

The history is computed from the index of each object (no storage), so 100,000 customers
and 300,000 charges cost nothing until asked for, and two accounts given the same
`History` hold identical data (the resume test compares them).

Run it standalone for benchmarks and subprocess tests:
    python -m tests.fakes.stripe --port 12111 --customers 100000 --charges 300000 --rate 100
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

DAY = 86_400


@dataclass(frozen=True)
class History:
    """What every connected account of the fake holds. Objects are spread evenly over
    `[end - days, end)`; charge j belongs to customer j % customers, except every tenth
    charge, a guest payment with only a billing email."""

    customers: int = 50
    charges: int = 150
    checkout_sessions: int = 10
    subscriptions: int = 10
    end: int = 1_790_000_000
    days: int = 730
    livemode: bool = False

    @property
    def start(self) -> int:
        return self.end - self.days * DAY

    def created(self, resource: str, i: int) -> int:
        n = self.count(resource)
        return self.start + (i * self.days * DAY) // max(1, n)

    def count(self, resource: str) -> int:
        return int(getattr(self, resource))


PREFIX = {
    "customers": "cus_",
    "charges": "ch_",
    "checkout_sessions": "cs_",
    "subscriptions": "sub_",
}
PATHS = {
    "/v1/customers": "customers",
    "/v1/charges": "charges",
    "/v1/checkout/sessions": "checkout_sessions",
    "/v1/subscriptions": "subscriptions",
}


def object_id(resource: str, i: int) -> str:
    return f"{PREFIX[resource]}{i:09d}"


def customer_email(i: int) -> str | None:
    if i % 50 == 7:
        return None  # no email: skipped as no_email
    if i % 97 == 3:
        return "not-an-address"  # skipped as invalid_email
    return f"Customer{i}@Example.com"


def render(h: History, resource: str, i: int) -> dict[str, Any]:
    created = h.created(resource, i)
    oid = object_id(resource, i)
    if resource == "customers":
        return {
            "id": oid,
            "object": "customer",
            "created": created,
            "email": customer_email(i),
            "name": f"Customer {i}",
            "address": {"country": "US"},
            "livemode": h.livemode,
            "metadata": {},
        }
    if resource == "charges":
        guest = i % 10 == 9
        customer = None if guest else object_id("customers", i % max(1, h.customers))
        email = f"guest{i % 997}@example.com" if guest else customer_email(i % max(1, h.customers))
        return {
            "id": oid,
            "object": "charge",
            "amount": 1000 + (i % 50) * 100,
            "amount_captured": 1000 + (i % 50) * 100,
            "amount_refunded": 0,
            "billing_details": {
                "address": {"country": "US"},
                "email": email,
                "name": f"Buyer {i % 997}" if guest else f"Customer {i % max(1, h.customers)}",
            },
            "captured": True,
            "created": created,
            "currency": "usd",
            "customer": customer,
            "invoice": None,
            "livemode": h.livemode,
            "paid": i % 20 != 5,
            "payment_intent": f"pi_{i:09d}",
            "receipt_email": None,
            "refunded": False,
            "status": "failed" if i % 20 == 5 else "succeeded",
        }
    if resource == "checkout_sessions":
        return {
            "id": oid,
            "object": "checkout.session",
            "created": created,
            "customer": None,
            "customer_details": {"email": f"buyer{i}@example.com", "name": f"Buyer {i}"},
            "consent": {"promotions": "opt_in" if i % 3 == 0 else None},
            "livemode": h.livemode,
            "mode": "payment",
            "payment_intent": f"pi_cs_{i:09d}",
            "payment_status": "paid",
            "status": "complete",
        }
    return {
        "id": oid,
        "object": "subscription",
        "created": created,
        "customer": object_id("customers", (i * 7) % max(1, h.customers)),
        "livemode": h.livemode,
        "status": "canceled" if i % 4 == 3 else "active",
    }


@dataclass
class Stats:
    requests: int = 0
    rate_limited: int = 0
    objects: int = 0
    by_path: Counter[str] = field(default_factory=Counter)


class FakeStripe:
    """The ASGI app. `rate` requests per second per Stripe account (0 = unlimited),
    `latency` seconds added to every answer."""

    def __init__(
        self,
        history: History | None = None,
        *,
        rate: float = 0,
        latency: float = 0.0,
        accounts: dict[str, History] | None = None,
    ) -> None:
        self.history = history or History()
        self.accounts = accounts or {}
        self.rate = rate
        self.latency = latency
        self.stats = Stats()
        self._arrivals: dict[str, deque[float]] = {}
        self._created_cache: dict[tuple[int, str], list[int]] = {}

    def history_of(self, account: str) -> History:
        return self.accounts.get(account, self.history)

    def _created_list(self, h: History, resource: str) -> list[int]:
        key = (id(h), resource)
        if key not in self._created_cache:
            self._created_cache[key] = [h.created(resource, i) for i in range(h.count(resource))]
        return self._created_cache[key]

    def _limited(self, account: str) -> bool:
        if not self.rate:
            return False
        now = time.monotonic()
        arrivals = self._arrivals.setdefault(account, deque())
        while arrivals and arrivals[0] <= now - 1.0:
            arrivals.popleft()
        if len(arrivals) >= self.rate:
            return True
        arrivals.append(now)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path: str = scope["path"]
        if path == "/_stats":
            stats = {
                "requests": self.stats.requests,
                "rate_limited": self.stats.rate_limited,
                "objects": self.stats.objects,
                "by_path": dict(self.stats.by_path),
            }
            await _respond(send, 200, stats)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        account = headers.get("stripe-account")
        self.stats.requests += 1
        self.stats.by_path[path] += 1
        if not headers.get("authorization"):
            await _respond(send, 401, _error("invalid_request_error", "api_key_missing"))
            return
        if not account:
            await _respond(send, 400, _error("invalid_request_error", "missing_stripe_account"))
            return
        if self._limited(account):
            self.stats.rate_limited += 1
            await _respond(
                send,
                429,
                _error("rate_limit_error", "rate_limit"),
                {"stripe-should-retry": "true", "stripe-rate-limited-reason": "global-rate"},
            )
            return
        if self.latency:
            await asyncio.sleep(self.latency)
        query = _query(scope.get("query_string", b"").decode())
        status, body = self.answer(account, path, query)
        await _respond(send, status, body)

    def answer(self, account: str, path: str, query: dict[str, str]) -> tuple[int, Any]:
        h = self.history_of(account)
        if path.startswith("/v1/customers/"):
            cid = path.rsplit("/", 1)[1]
            index = _index(cid, "customers", h)
            if index is None:
                return 404, _error("invalid_request_error", "resource_missing")
            return 200, render(h, "customers", index)
        resource = PATHS.get(path)
        if resource is None:
            return 404, _error("invalid_request_error", "resource_missing")
        if resource == "checkout_sessions" and query.get("status") not in (None, "complete"):
            return 200, {"object": "list", "data": [], "has_more": False}
        return self._list(h, resource, query)

    def _list(self, h: History, resource: str, query: dict[str, str]) -> tuple[int, Any]:
        try:
            limit = int(query.get("limit", "10"))
        except ValueError:
            return 400, _error("invalid_request_error", "parameter_invalid_integer")
        if not 1 <= limit <= 100:
            return 400, _error("invalid_request_error", "parameter_invalid_integer")
        created = self._created_list(h, resource)
        lo, hi = 0, len(created)  # candidate indices [lo, hi), newest = hi - 1
        bounds = {k: query.get(f"created[{k}]") for k in ("gte", "gt", "lt", "lte")}
        if bounds["gte"] is not None:
            lo = max(lo, bisect.bisect_left(created, int(bounds["gte"])))
        if bounds["gt"] is not None:
            lo = max(lo, bisect.bisect_right(created, int(bounds["gt"])))
        if bounds["lt"] is not None:
            hi = min(hi, bisect.bisect_left(created, int(bounds["lt"])))
        if bounds["lte"] is not None:
            hi = min(hi, bisect.bisect_right(created, int(bounds["lte"])))
        after = query.get("starting_after")
        if after is not None:
            index = _index(after, resource, h)
            if index is None:
                return 400, _error("invalid_request_error", "resource_missing")
            hi = min(hi, index)  # newest first: everything older than the cursor
        indices = list(range(hi - 1, max(lo, hi - limit) - 1, -1)) if hi > lo else []
        data = [render(h, resource, i) for i in indices]
        self.stats.objects += len(data)
        has_more = bool(indices) and indices[-1] > lo
        url = "/v1/checkout/sessions" if resource == "checkout_sessions" else f"/v1/{resource}"
        return 200, {"object": "list", "data": data, "has_more": has_more, "url": url}


def _index(oid: str, resource: str, h: History) -> int | None:
    prefix = PREFIX[resource]
    if not oid.startswith(prefix) or not oid[len(prefix) :].isdigit():
        return None
    index = int(oid[len(prefix) :])
    return index if index < h.count(resource) else None


def _query(raw: str) -> dict[str, str]:
    from urllib.parse import parse_qsl

    return dict(parse_qsl(raw, keep_blank_values=True))


def _error(kind: str, code: str) -> dict[str, Any]:
    return {"error": {"type": kind, "code": code, "message": code.replace("_", " ")}}


async def _respond(
    send: Send, status: int, body: Any, headers: dict[str, str] | None = None
) -> None:
    raw = json.dumps(body, separators=(",", ":")).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=12111)
    parser.add_argument("--customers", type=int, default=History.customers)
    parser.add_argument("--charges", type=int, default=History.charges)
    parser.add_argument("--checkout-sessions", type=int, default=History.checkout_sessions)
    parser.add_argument("--subscriptions", type=int, default=History.subscriptions)
    parser.add_argument("--end", type=int, default=History.end)
    parser.add_argument("--days", type=int, default=History.days)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--latency", type=float, default=0.0)
    args = parser.parse_args()
    history = History(
        customers=args.customers,
        charges=args.charges,
        checkout_sessions=args.checkout_sessions,
        subscriptions=args.subscriptions,
        end=args.end,
        days=args.days,
    )
    app = FakeStripe(history, rate=args.rate, latency=args.latency)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
