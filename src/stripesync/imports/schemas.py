"""The HTTP contract of jobs (api.md, Ops API) and of `POST /stripe/resync`."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

JobStateName = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JobKindName = Literal["import", "resync", "recompute", "bulk_sync"]


class JobProgress(BaseModel):
    phase: str | None = None
    done: int = 0
    total: int = 0


class JobOut(BaseModel):
    id: str
    account_id: str
    kind: JobKindName
    state: JobStateName
    progress: JobProgress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    report: dict[str, Any] = Field(default_factory=dict)


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None


class ResyncAccepted(BaseModel):
    job_id: str
