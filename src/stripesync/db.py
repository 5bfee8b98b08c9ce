"""Engine and sessions: the one place that commits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import structlog
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from stripesync.config import Settings

SessionFactory = async_sessionmaker[AsyncSession]
AfterCommit = Callable[[], Awaitable[object]]

log = structlog.get_logger(__name__)


def create_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        # Errors name the statement but not its parameters (emails, ciphertexts): they
        # end up in logged tracebacks.
        hide_parameters=True,
        # Fail fast when Postgres is down, so callers answer 503 instead of hanging.
        connect_args={"timeout": 5, "command_timeout": 30},
    )


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


def after_commit(session: AsyncSession, callback: AfterCommit) -> None:
    """Run `callback()` once this session's transaction has committed (never if it rolls back).

    For enqueueing jobs whose input the transaction writes: a job must never run before
    the rows it reads exist. Failures are logged, not raised: whatever the callback would
    have started is re-derived from Postgres by a sweeper.
    """
    session.info.setdefault("after_commit", []).append(callback)


async def _run_after_commit(session: AsyncSession) -> None:
    callbacks: list[AfterCommit] = session.info.pop("after_commit", [])
    for callback in callbacks:
        try:
            await callback()
        except Exception as exc:
            log.warning("after_commit_failed", error=type(exc).__name__, detail=str(exc)[:200])


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """One unit of work: commits on success, rolls back on any error, then runs the
    `after_commit` callbacks registered during it."""
    async with factory() as session:
        async with session.begin():
            yield session
        await _run_after_commit(session)


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: SessionFactory = request.app.state.session_factory
    async with transaction(factory) as session:
        yield session


# scope="function": the commit happens when the endpoint returns and before the response is
# sent, so a failed commit becomes an error answer, never an acknowledged loss.
DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
