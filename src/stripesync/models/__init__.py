"""All tables, imported here so alembic and the tests see the whole schema."""

from stripesync.models.account import (
    ENCRYPTED,
    Account,
    ConnectionMode,
    ConnectionStatus,
    OAuthState,
    StripeConnection,
)
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
from stripesync.models.job import (
    ACTIVE_JOB_STATES,
    IMPORT_KINDS,
    ImportTouched,
    ImportWindow,
    Job,
    JobKind,
    JobState,
    NoticeState,
)
from stripesync.models.optin import (
    OptinEmail,
    OptinEmailSettings,
    OptinEmailState,
    OptinEmailVersion,
    OptinResponse,
)
from stripesync.models.segment import (
    AutomationOutbox,
    ContactActivitySnapshot,
    ContactSegment,
    OutboxState,
    Segment,
    SegmentKind,
    SegmentSettings,
)
from stripesync.models.sync import (
    BatchKind,
    BatchState,
    CustomFieldKey,
    PlatformCustomField,
    SyncBatch,
    SyncState,
)

__all__ = [
    "ACTIVE_JOB_STATES",
    "ENCRYPTED",
    "IMPORT_KINDS",
    "PENDING_STATES",
    "PERMITTED_CONSENT",
    "Account",
    "AutomationOutbox",
    "Base",
    "BatchKind",
    "BatchState",
    "CheckoutSession",
    "ConnectionMode",
    "ConnectionStatus",
    "ConsentEvent",
    "ConsentState",
    "Contact",
    "ContactActivitySnapshot",
    "ContactSegment",
    "CustomFieldKey",
    "EventState",
    "ImportTouched",
    "ImportWindow",
    "Job",
    "JobKind",
    "JobState",
    "NoticeState",
    "OAuthState",
    "OptinEmail",
    "OptinEmailSettings",
    "OptinEmailState",
    "OptinEmailVersion",
    "OptinResponse",
    "OutboxState",
    "Payment",
    "PlatformCustomField",
    "Segment",
    "SegmentKind",
    "SegmentSettings",
    "StripeConnection",
    "StripeCustomer",
    "StripeEvent",
    "Subscription",
    "Suppression",
    "SyncBatch",
    "SyncState",
]
