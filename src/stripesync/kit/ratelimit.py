"""A request budget shared by every worker process, kept in Redis.

Each budget has a name (an API key, a Stripe connection, ...), a rate per second and an
optional daily quota (UTC day, reset at 00:00 UTC). The rate is enforced as a sliding-window
log: a sorted set holds the grant time of every request of the last window, so no one-second
window ever holds more than the rate. A fixed window would let twice the rate through across a
window boundary, which is exactly what a strict server such as Constant Contact punishes.

The check-and-record is one Lua script, so concurrent workers in any number of processes
cannot both take the last slot, and the clock is Redis's own (`TIME`), so all workers agree
on it.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from stripesync.kit import metrics

_IN_FLIGHT_POLL_SECONDS = 0.05

# KEYS[1]: the window log (sorted set), KEYS[2]: prefix of the per-day counters.
# ARGV: requests per window, window in microseconds, daily quota (0 = none), a unique member,
# hold in microseconds (a slot held by a request in flight counts as "now" until released).
# Returns {0, 0} when granted, {1, wait_us} when the window is full, {2, next_day_epoch}
# when the day's quota is used up.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local quota = tonumber(ARGV[3])
local day = math.floor(tonumber(t[1]) / 86400)
local day_key = KEYS[2] .. ':' .. day
if quota > 0 then
  local used = tonumber(redis.call('GET', day_key) or '0')
  if used >= quota then
    return {2, (day + 1) * 86400}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  local hold = tonumber(ARGV[5])
  redis.call('ZADD', KEYS[1], now + hold, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], math.ceil((window + hold) / 1000) + 1000)
  if quota > 0 then
    redis.call('INCR', day_key)
    redis.call('EXPIRE', day_key, 2 * 86400)
  end
  return {0, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, tonumber(oldest[2]) + window - now}
"""

# A request finished: its slot counts from now (when it surely reached the server) on.
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
return redis.call('ZADD', KEYS[1], 'XX', now, ARGV[1])
"""

# Marks today's quota as used up (the server told us so before our own count did).
_EXHAUST = """
local t = redis.call('TIME')
local day = math.floor(tonumber(t[1]) / 86400)
local day_key = KEYS[1] .. ':' .. day
redis.call('SET', day_key, ARGV[1], 'EX', 2 * 86400)
return (day + 1) * 86400
"""


class QuotaExhausted(Exception):
    """The daily quota of a budget is used up; work must wait until `retry_at` (UTC)."""

    def __init__(self, name: str, retry_at: datetime) -> None:
        super().__init__(f"daily quota of {name} used up until {retry_at.isoformat()}")
        self.name = name
        self.retry_at = retry_at


class RateLimitTimeout(Exception):
    """`acquire(max_wait=...)` could not get a slot in time."""


@dataclass(frozen=True)
class Budget:
    """How many requests a window holds and how long the window is."""

    per_window: int
    window_seconds: float

    @classmethod
    def from_rate(cls, per_second: float, margin_seconds: float = 0.0) -> Budget:
        """A budget that never exceeds `per_second` in any one-second window.

        Below 1/s the window grows (0.5/s → one request per 2 s). `margin_seconds` widens
        the window a little so that jitter between our grant and the server's receipt of
        the request cannot squeeze one request too many into the server's window.
        """
        if per_second <= 0:
            raise ValueError("per_second must be positive")
        if per_second >= 1:
            return cls(math.floor(per_second), 1.0 + margin_seconds)
        return cls(1, 1.0 / per_second + margin_seconds)


class RateLimiter:
    """A named request budget shared through Redis by every process that uses the name."""

    def __init__(
        self,
        redis: Redis,
        name: str,
        *,
        per_second: float,
        per_day: int | None = None,
        margin_seconds: float = 0.05,
        api: str | None = None,
        key_prefix: str = "stripesync:ratelimit",
    ) -> None:
        self.redis = redis
        self.name = name
        self.budget = Budget.from_rate(per_second, margin_seconds)
        self.per_day = per_day
        self.api = api or name  # the metrics label: low cardinality (e.g. "constant_contact")
        self._window_key = f"{key_prefix}:{name}:window"
        self._day_key = f"{key_prefix}:{name}:day"
        self._acquire = redis.register_script(_ACQUIRE)
        self._exhaust = redis.register_script(_EXHAUST)
        self._release = redis.register_script(_RELEASE)

    async def acquire(self, *, max_wait: float | None = None) -> float:
        """Take one request slot, sleeping while the window is full; answer the seconds waited.

        The slot counts from the moment it is granted. Raises `QuotaExhausted` (with the next
        UTC midnight) when the day's quota is used up, and `RateLimitTimeout` when `max_wait`
        seconds pass without a slot.
        """
        waited, _ = await self._take(hold_seconds=0.0, max_wait=max_wait)
        return waited

    @asynccontextmanager
    async def slot(
        self, *, hold_seconds: float = 60.0, max_wait: float | None = None
    ) -> AsyncIterator[float]:
        """Hold a slot for the duration of one request; yields the seconds waited.

        While the request is in flight its slot counts as "now"; on leaving, it counts from
        the moment the answer came back. A server counts a request when it arrives, which is
        somewhere between our grant and its answer, so measuring the window from the answer
        keeps the server's every 1 s window within the rate whatever the latency (a fresh
        connection, a TLS handshake, a busy machine). A process that dies mid-request frees
        its slot after `hold_seconds` (set it to the request timeout).
        """
        waited, member = await self._take(hold_seconds=hold_seconds, max_wait=max_wait)
        try:
            yield waited
        finally:
            await self._release(keys=[self._window_key], args=[member])

    async def _take(self, *, hold_seconds: float, max_wait: float | None) -> tuple[float, str]:
        started = time.monotonic()
        member = uuid.uuid4().hex
        window_us = int(self.budget.window_seconds * 1_000_000)
        hold_us = int(hold_seconds * 1_000_000)
        while True:
            status, value = await self._acquire(
                keys=[self._window_key, self._day_key],
                args=[self.budget.per_window, window_us, self.per_day or 0, member, hold_us],
            )
            status, value = int(status), int(value)
            if status == 0:
                waited = time.monotonic() - started
                metrics.RATE_LIMIT_WAIT.labels(self.api).observe(waited)
                return waited, member
            if status == 2:
                raise QuotaExhausted(self.name, datetime.fromtimestamp(value, UTC))
            delay = value / 1_000_000
            if delay > self.budget.window_seconds:
                # The oldest slot is still in flight: look again shortly.
                delay = _IN_FLIGHT_POLL_SECONDS
            # A little jitter, so waiters that woke together do not all race for one slot.
            delay += random.uniform(0, 0.01)
            if max_wait is not None and time.monotonic() - started + delay > max_wait:
                raise RateLimitTimeout(f"no slot in {self.name} within {max_wait} s")
            await asyncio.sleep(max(delay, 0.001))

    async def exhaust_today(self) -> datetime:
        """Mark today's quota as used up (the server said so); answer when it resets."""
        value = await self._exhaust(keys=[self._day_key], args=[self.per_day or 1])
        return datetime.fromtimestamp(int(value), UTC)

    async def used_today(self) -> int:
        """Requests granted so far in the current UTC day (by Redis's clock)."""
        seconds, _ = await self.redis.time()
        raw = await self.redis.get(f"{self._day_key}:{int(seconds) // 86400}")
        return int(raw or 0)


def next_utc_midnight(now: datetime) -> datetime:
    """The start of the UTC day after `now`."""
    day = now.astimezone(UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
