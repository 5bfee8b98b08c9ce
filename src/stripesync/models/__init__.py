"""All tables, imported here so alembic and the tests see the whole schema."""

from stripesync.models.account import Account, ConnectionMode, ConnectionStatus, StripeConnection
from stripesync.models.base import Base
from stripesync.models.event import PENDING_STATES, EventState, StripeEvent

__all__ = [
    "PENDING_STATES",
    "Account",
    "Base",
    "ConnectionMode",
    "ConnectionStatus",
    "EventState",
    "StripeConnection",
    "StripeEvent",
]
