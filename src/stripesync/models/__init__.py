"""All tables, imported here so alembic and the tests see the whole schema."""

from stripesync.models.account import Account, ConnectionMode, ConnectionStatus, StripeConnection
from stripesync.models.activity import (
    CheckoutSession,
    ConsentEvent,
    Payment,
    StripeCustomer,
    Subscription,
    Suppression,
)
from stripesync.models.base import Base
from stripesync.models.contact import PERMITTED_CONSENT, ConsentState, Contact
from stripesync.models.event import PENDING_STATES, EventState, StripeEvent

__all__ = [
    "PENDING_STATES",
    "PERMITTED_CONSENT",
    "Account",
    "Base",
    "CheckoutSession",
    "ConnectionMode",
    "ConnectionStatus",
    "ConsentEvent",
    "ConsentState",
    "Contact",
    "EventState",
    "Payment",
    "StripeConnection",
    "StripeCustomer",
    "StripeEvent",
    "Subscription",
    "Suppression",
]
