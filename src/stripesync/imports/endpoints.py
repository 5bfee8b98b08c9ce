"""Jobs for operators (`/v1/jobs`, ops token) and `POST /stripe/resync` for the platform."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from stripesync.db import DbSession
from stripesync.imports import service
from stripesync.imports.schemas import JobList, JobOut, JobStateName, ResyncAccepted
from stripesync.kit.auth import require_ops_token, require_platform_token
from stripesync.kit.schemas import error_responses
from stripesync.kit.tenancy import AccountIdPath

router = APIRouter(
    prefix="/v1/jobs",
    tags=["jobs"],
    dependencies=[Depends(require_ops_token)],
    responses=error_responses(401, 422),
)
resync_router = APIRouter(
    prefix="/v1/accounts",
    tags=["accounts"],
    dependencies=[Depends(require_platform_token)],
    responses=error_responses(401, 404, 422),
)


@router.get("", response_model=JobList)
async def list_jobs(
    session: DbSession,
    account_id: Annotated[str | None, Query(max_length=64)] = None,
    state: JobStateName | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobList:
    """Jobs, newest first, optionally of one account and in one state."""
    return await service.list_jobs(
        session, account_id=account_id, state=state, limit=limit, cursor=cursor
    )


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(404))
async def get_job(
    session: DbSession, job_id: Annotated[str, Path(min_length=1, max_length=40)]
) -> JobOut:
    """One job: state, progress (phase, done, an estimated total), timings, error, report."""
    return await service.get_job(session, job_id)


@resync_router.post(
    "/{account_id}/stripe/resync",
    status_code=202,
    response_model=ResyncAccepted,
    responses=error_responses(409),
)
async def resync(account_id: AccountIdPath, session: DbSession, request: Request) -> ResyncAccepted:
    """Run the historical import again: idempotent, nobody is emailed twice, nothing doubles.
    While an import is queued or running, answers that job."""
    job = await service.resync(session, getattr(request.app.state, "redis", None), account_id)
    return ResyncAccepted(job_id=job.id)
