"""Wires imports into the connect flow: a new connection gets its import job row in the
callback's own transaction, so the job exists as soon as the connection does (the callback
then enqueues `import_history`; the sweeper covers a lost enqueue).

Imported by the worker and the API through webhooks.dispatch.HANDLER_MODULES."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts.oauth import on_stripe_connected
from stripesync.imports.service import ensure_import_job
from stripesync.models import StripeConnection


@on_stripe_connected
async def create_import_job(session: AsyncSession, connection: StripeConnection) -> None:
    await ensure_import_job(session, connection)
