"""Engine and sessions: the one place that commits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from stripesync.config import Settings

SessionFactory = async_sessionmaker[AsyncSession]


def create_engine(settings: Settings, *, pool_size: int = 10) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=5,
        # Fail fast when Postgres is down, so callers answer 503 instead of hanging.
        connect_args={"timeout": 5, "command_timeout": 30},
    )


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """One unit of work for a job: commits on success, rolls back on any error."""
    async with factory() as session, session.begin():
        yield session


async def _request_session(request: Request) -> AsyncIterator[AsyncSession]:
    factory: SessionFactory = request.app.state.session_factory
    async with transaction(factory) as session:
        yield session


# scope="function": the commit happens when the endpoint returns and before the response is
# sent, so a failed commit becomes an error answer, never an acknowledged loss.
DbSession = Annotated[AsyncSession, Depends(_request_session, scope="function")]
