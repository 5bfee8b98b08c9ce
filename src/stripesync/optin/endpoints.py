"""Platform API: the opt-in email's settings, its preview and its activation."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from stripesync.db import DbSession
from stripesync.kit.auth import require_platform_token
from stripesync.kit.schemas import error_responses
from stripesync.kit.tenancy import AccountIdPath
from stripesync.optin import service
from stripesync.optin.schemas import OptinEmailIn, OptinEmailOut, PreviewFormat

router = APIRouter(
    prefix="/v1/accounts/{account_id}/optin-email",
    tags=["optin"],
    dependencies=[Depends(require_platform_token)],
    responses=error_responses(401, 404, 422),
)


@router.get("", response_model=OptinEmailOut)
async def get_optin_email(session: DbSession, account_id: AccountIdPath) -> OptinEmailOut:
    """The saved settings, or defaults naming the merchant."""
    return await service.get_settings(session, account_id)


@router.put("", response_model=OptinEmailOut)
async def put_optin_email(
    session: DbSession, account_id: AccountIdPath, body: OptinEmailIn
) -> OptinEmailOut:
    """Save subject, from name and address, reply-to and intro (plain text)."""
    return await service.put_settings(session, account_id, body)


@router.get(
    "/preview",
    response_class=Response,
    responses={200: {"content": {"text/html": {}, "text/plain": {}}}},
)
async def preview_optin_email(
    request: Request,
    session: DbSession,
    account_id: AccountIdPath,
    format: Annotated[PreviewFormat, Query()] = "html",
) -> Response:
    """The email exactly as a customer gets it; its links open /optin/preview, which
    records nothing."""
    rendered = await service.preview(
        session, request.app.state.settings.public_base_url, account_id
    )
    if format == "text":
        return Response(rendered.text, media_type="text/plain; charset=utf-8")
    return Response(rendered.html, media_type="text/html; charset=utf-8")


@router.post("/activate", response_model=OptinEmailOut)
async def activate_optin_email(session: DbSession, account_id: AccountIdPath) -> OptinEmailOut:
    """Mark the email reviewed; from then on POST /stripe/connect accepts mode optin."""
    return await service.activate(session, account_id)
