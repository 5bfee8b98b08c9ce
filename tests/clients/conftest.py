"""A fake Constant Contact server per test, and clients pointed at it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from stripesync.clients.constant_contact import ConstantContactClient, TokenProvider
from stripesync.kit.ratelimit import RateLimiter
from tests.fakes.constant_contact import FakeConstantContact


@pytest.fixture
def fake_cc() -> Iterator[FakeConstantContact]:
    with FakeConstantContact(
        requests_per_second=1000, processing_after=0.02, completed_after=0.1
    ) as fake:
        yield fake


class RecordingTokens:
    """A token provider that answers `old` until asked to refresh, then `new`."""

    def __init__(self, old: str = "token-old", new: str = "token-new") -> None:
        self.old, self.new = old, new
        self.calls: list[bool] = []
        self.refreshed = False

    async def __call__(self, force_refresh: bool) -> str:
        self.calls.append(force_refresh)
        if force_refresh:
            self.refreshed = True
        return self.new if self.refreshed else self.old


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def make_client(
    http: httpx.AsyncClient, fake_cc: FakeConstantContact
) -> Callable[..., ConstantContactClient]:
    def make(
        token: TokenProvider | None = None, limiter: RateLimiter | None = None, **options: Any
    ) -> ConstantContactClient:
        options.setdefault("backoff_base", 0.01)
        return ConstantContactClient(
            http,
            api_base=fake_cc.url,
            token=token or RecordingTokens(),
            limiter=limiter,
            **options,
        )

    return make
