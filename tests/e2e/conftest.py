"""Fixtures of the end-to-end tests: a started `World` (tests/e2e/harness.py).

`make test` runs what is not marked `e2e` (the smoke scenario); `make test-e2e` runs the
long scenarios and the faults (`-m e2e`). On failure the processes' logs are kept in the
world's directory (its path is printed).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.e2e.harness import World


@pytest.fixture
async def make_world(
    server_urls: tuple[str, str], request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """`await make_world(own_postgres=False, **options)`: a started world, stopped after."""
    worlds: list[World] = []

    async def make(*, own_postgres: bool = False, **options: Any) -> World:
        world = World(admin_url=None if own_postgres else server_urls[0], **options)
        worlds.append(world)
        return await world.start()

    yield make
    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for world in worlds:
        await world.stop()
        if failed:
            print(f"\ne2e logs kept in {world.dir}")
        else:
            world.cleanup_dir()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report
