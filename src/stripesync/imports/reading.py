"""Reading Stripe for an import: every request takes a slot of the connection's budget
(shared through Redis by every worker), and what Stripe asks to retry is retried with
jittered exponential backoff."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from typing import Any

import structlog

from stripesync.clients.stripe import StripeClient, StripeList, StripeUnavailable
from stripesync.config import Settings
from stripesync.kit.ratelimit import RateLimiter

log = structlog.get_logger(__name__)

# Widens the budget's 1 s window: a request granted at t may reach Stripe a little later
# than the one granted just before it.
BUDGET_MARGIN_SECONDS = 0.05
BACKOFF_CAP_SECONDS = 30.0


def stripe_budget(settings: Settings, livemode: bool) -> float:
    if livemode:
        return settings.stripe_import_live_requests_per_second
    return settings.stripe_import_test_requests_per_second


def backoff(settings: Settings, attempt: int) -> float:
    """Exponential with jitter: a herd of readers that hit a 429 together spread out."""
    ceiling = min(BACKOFF_CAP_SECONDS, settings.import_backoff_base_seconds * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)


@dataclass
class RequestStats:
    requests: int = 0
    rate_limited: int = 0
    retried: int = 0


class StripeReader:
    """Pages and objects of one connected Stripe account, within its request budget."""

    def __init__(
        self,
        client: StripeClient,
        limiter: RateLimiter,
        settings: Settings,
        stripe_account: str,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.settings = settings
        self.stripe_account = stripe_account
        self.stats = RequestStats()

    async def _call(self, what: str, request: Any) -> Any:
        attempts = max(1, self.settings.import_request_attempts)
        for attempt in range(attempts):
            # Stripe counts a request when it arrives: the slot counts from its grant, and
            # the limiter's margin covers the jitter between our grant and Stripe's receipt.
            await self.limiter.acquire()
            self.stats.requests += 1
            try:
                return await request()
            except StripeUnavailable as exc:
                failure = exc
            if failure.status == 429:
                self.stats.rate_limited += 1
            if attempt + 1 == attempts:
                raise failure
            self.stats.retried += 1
            delay = backoff(self.settings, attempt)
            log.info("stripe_retry", what=what, status=failure.status, delay=round(delay, 2))
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def page(
        self, path: str, params: dict[str, Any], gte: int, lt: int, starting_after: str | None
    ) -> StripeList:
        async def request() -> StripeList:
            return await self.client.list_page(
                path,
                stripe_account=self.stripe_account,
                starting_after=starting_after,
                created_gte=gte,
                created_lt=lt,
                params=params,
            )

        result: StripeList = await self._call(path, request)
        return result

    async def customer(self, customer_id: str) -> dict[str, Any]:
        async def request() -> dict[str, Any]:
            return await self.client.retrieve_customer(
                customer_id, stripe_account=self.stripe_account
            )

        result: dict[str, Any] = await self._call("/v1/customers/{id}", request)
        return result
