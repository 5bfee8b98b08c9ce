"""Stripe events about the connection itself."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts.service import revoke_connection
from stripesync.models import StripeConnection, StripeEvent
from stripesync.webhooks.dispatch import handles


@handles("account.application.deauthorized")
async def revoke_on_deauthorization(
    session: AsyncSession, event: StripeEvent, connection: StripeConnection
) -> None:
    """The merchant disconnected us in Stripe: the token is already revoked, so this only
    marks the connection revoked (later events are ignored) and never calls Stripe.

    The worker hands us only the ACTIVE connection whose livemode matches the event's, so
    a test-mode deauthorization never revokes a live connection, nor the other way round.
    """
    revoke_connection(connection, reason="deauthorized_in_stripe")
