from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel


class StoredEvent(BaseModel):
    id: str
    type: str
    account: str | None
    livemode: bool
    created: datetime
    received_at: datetime
    state: str
    attempts: int
    last_error: str | None
    ignored_reason: str | None
    next_attempt_at: datetime | None
    processed_at: datetime | None


class StoredEventList(BaseModel):
    events: list[StoredEvent]
    next_cursor: str | None


class ReplayAccepted(BaseModel):
    event_id: str
    state: str
