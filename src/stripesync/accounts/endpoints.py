"""Platform API for accounts and the Stripe connection, and the public OAuth callback."""

from __future__ import annotations

from html import escape
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from stripesync.accounts import oauth, service
from stripesync.accounts.schemas import AccountIn, AccountOut, ConnectIn, ConnectOut, DashboardOut
from stripesync.config import Settings
from stripesync.db import DbSession
from stripesync.kit.auth import require_platform_token
from stripesync.kit.schemas import error_responses
from stripesync.kit.tenancy import AccountIdPath

router = APIRouter(
    prefix="/v1/accounts",
    tags=["accounts"],
    dependencies=[Depends(require_platform_token)],
    responses=error_responses(401, 404, 422),
)
callback_router = APIRouter(tags=["oauth"])


@router.put(
    "/{account_id}",
    response_model=AccountOut,
    status_code=200,
    responses={201: {"model": AccountOut, "description": "Created"}},
)
async def put_account(
    account_id: AccountIdPath,
    body: AccountIn,
    session: DbSession,
    request: Request,
    response: Response,
) -> AccountOut:
    """Register or update a platform account (201 on create). Secrets are never echoed."""
    account, created = await service.upsert_account(
        session, request.app.state.settings, account_id, body
    )
    if created:
        response.status_code = 201
    return service.account_out(account)


@router.get("/{account_id}", response_model=DashboardOut, response_model_by_alias=True)
async def get_account_dashboard(account_id: AccountIdPath, session: DbSession) -> DashboardOut:
    """The integration dashboard's data: connection, import, opt-in counts, segments."""
    return await service.dashboard(session, account_id)


@router.post(
    "/{account_id}/stripe/connect",
    response_model=ConnectOut,
    status_code=201,
    responses=error_responses(409, 503),
)
async def connect_stripe(
    account_id: AccountIdPath, body: ConnectIn, session: DbSession, request: Request
) -> ConnectOut:
    """Start connecting Stripe: answers the URL to send the merchant to."""
    return await oauth.start_connect(
        session,
        request.app.state.settings,
        account_id,
        body,
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent"),
    )


@router.delete("/{account_id}/stripe", status_code=204, response_class=Response)
async def disconnect_stripe(
    account_id: AccountIdPath,
    session: DbSession,
    request: Request,
    purge: Annotated[
        bool, Query(description="Also delete stored customer and payment data.")
    ] = False,
) -> Response:
    """Disconnect Stripe: deauthorize (best effort), stop processing, cancel its jobs."""
    state = request.app.state
    await service.disconnect(
        session, state.http, state.redis, state.settings, account_id, purge=purge
    )
    return Response(status_code=204)


_BAD_STATE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Connection link not valid</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body><main><h1>This connection link is not valid</h1>
<p>{message}</p></main></body></html>"""


@callback_router.get(
    "/oauth/stripe/callback",
    status_code=303,
    response_class=RedirectResponse,
    responses={
        400: {"description": "Unreadable state: a plain page", "content": {"text/html": {}}}
    },
)
async def stripe_oauth_callback(
    request: Request,
    code: Annotated[str | None, Query(max_length=512)] = None,
    state: Annotated[str | None, Query(max_length=4096)] = None,
    error: Annotated[str | None, Query(max_length=255)] = None,
    error_description: Annotated[str | None, Query(max_length=2000)] = None,
) -> Response:
    """Stripe sends the merchant here; we send them back to the platform (303)."""
    app_state = request.app.state
    settings: Settings = app_state.settings
    result = await oauth.handle_callback(
        app_state.session_factory,
        app_state.http,
        app_state.redis,
        settings,
        code=code,
        state=state,
        error=error,
    )
    if result.redirect_url is None:
        message = escape(
            "We could not read this link. Go back to the integrations page and connect again."
        )
        return HTMLResponse(_BAD_STATE_PAGE.format(message=message), status_code=400)
    return RedirectResponse(result.redirect_url, status_code=303)
