"""The account context every apply function runs in, for webhook events and imports alike."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from stripesync.models import ConnectionMode, StripeConnection, StripeEvent

# The Stripe API version our webhook endpoint and API calls are pinned to; payload shapes
# (and tests/fixtures/stripe/*.json) follow it. At this version `invoice.charge` exists and
# `charge.refunds` is not included in webhook payloads.
STRIPE_API_VERSION = "2024-06-20"


@dataclass(frozen=True)
class ActivityContext:
    account_id: str
    connection_id: int
    mode: str  # ConnectionMode: optin | direct
    livemode: bool
    # When Stripe produced the object: the event's `created`, or the fetch time of an
    # import. Only used where object state cannot order two snapshots (see precedence.py).
    observed_at: datetime

    @property
    def direct(self) -> bool:
        return self.mode == ConnectionMode.DIRECT

    @classmethod
    def for_connection(cls, connection: StripeConnection, observed_at: datetime) -> ActivityContext:
        return cls(
            account_id=connection.account_id,
            connection_id=connection.id,
            mode=connection.mode,
            livemode=connection.livemode,
            observed_at=observed_at,
        )

    @classmethod
    def for_event(cls, event: StripeEvent, connection: StripeConnection) -> ActivityContext:
        return cls.for_connection(connection, event.created)
