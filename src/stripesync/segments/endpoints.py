"""Platform API: segments, their members and previews, and the built-ins' thresholds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from stripesync.db import DbSession
from stripesync.kit.auth import require_platform_token
from stripesync.kit.schemas import error_responses
from stripesync.kit.tenancy import AccountIdPath
from stripesync.segments import service
from stripesync.segments.schemas import (
    MemberPage,
    PreviewIn,
    PreviewOut,
    SegmentIn,
    SegmentList,
    SegmentOut,
    SegmentSettingsBody,
)

router = APIRouter(
    prefix="/v1/accounts/{account_id}",
    tags=["segments"],
    dependencies=[Depends(require_platform_token)],
    responses=error_responses(401, 404, 422),
)

SegmentIdPath = Annotated[
    int, Path(ge=1, le=2**63 - 1, description="The segment's id, as the segment lists give it.")
]


@router.get("/segments", response_model=SegmentList)
async def list_segments(session: DbSession, account_id: AccountIdPath) -> SegmentList:
    """Built-in and custom segments with exact member counts."""
    return SegmentList(segments=await service.list_segments(session, account_id))


@router.post(
    "/segments", status_code=201, response_model=SegmentOut, responses=error_responses(409)
)
async def create_segment(
    session: DbSession, account_id: AccountIdPath, body: SegmentIn
) -> SegmentOut:
    """A custom segment (at most 50 per account); its members are computed at once."""
    return await service.create_custom(session, account_id, body.name, body.rule)


@router.post("/segments/preview", response_model=PreviewOut)
async def preview_segment(
    session: DbSession, account_id: AccountIdPath, body: PreviewIn
) -> PreviewOut:
    """How many contacts with permission a rule selects now, and a few of them."""
    return await service.preview(session, account_id, body.rule)


@router.put("/segments/{segment_id}", response_model=SegmentOut, responses=error_responses(409))
async def update_segment(
    session: DbSession, account_id: AccountIdPath, segment_id: SegmentIdPath, body: SegmentIn
) -> SegmentOut:
    """Rename a custom segment or change its rule (409 for built-ins)."""
    return await service.update_custom(session, account_id, segment_id, body.name, body.rule)


@router.delete(
    "/segments/{segment_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(409),
)
async def delete_segment(
    session: DbSession, account_id: AccountIdPath, segment_id: SegmentIdPath
) -> Response:
    """Delete a custom segment (409 for built-ins): its members leave it at once and the
    sync engine deletes its platform list; the contacts stay on the platform."""
    await service.delete_custom(session, account_id, segment_id)
    return Response(status_code=204)


@router.get("/segments/{segment_id}/members", response_model=MemberPage)
async def segment_members(
    session: DbSession,
    account_id: AccountIdPath,
    segment_id: SegmentIdPath,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> MemberPage:
    """The segment's members in a stable order, a page at a time."""
    return await service.members_page(session, account_id, segment_id, limit=limit, cursor=cursor)


@router.get("/segment-settings", response_model=SegmentSettingsBody)
async def get_segment_settings(
    session: DbSession, account_id: AccountIdPath
) -> SegmentSettingsBody:
    """The built-ins' thresholds (the defaults of segments.md until changed)."""
    return await service.get_thresholds(session, account_id)


@router.put("/segment-settings", response_model=SegmentSettingsBody)
async def put_segment_settings(
    session: DbSession, account_id: AccountIdPath, body: SegmentSettingsBody
) -> SegmentSettingsBody:
    """Change the thresholds; the built-ins they affect are recomputed at once. Fields left
    out take their defaults."""
    return await service.put_thresholds(session, account_id, body)
