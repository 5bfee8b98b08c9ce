"""Platform API: a contact by email, unsubscribes the platform reports, erasure."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from stripesync.activity import contacts
from stripesync.activity.schemas import ContactView, UnsubscribeRequest
from stripesync.db import DbSession
from stripesync.kit.auth import require_platform_token
from stripesync.kit.schemas import error_responses
from stripesync.kit.tenancy import AccountIdPath, get_account

router = APIRouter(
    prefix="/v1/accounts/{account_id}/contacts",
    tags=["contacts"],
    dependencies=[Depends(require_platform_token)],
    responses=error_responses(401, 404, 422),
)

EmailQuery = Annotated[str, Query(min_length=1, max_length=320, description="Any case/spacing.")]


@router.get("", response_model=ContactView)
async def get_contact(
    session: DbSession, account_id: AccountIdPath, email: EmailQuery
) -> ContactView:
    """The contact: consent and its evidence, Stripe customer ids, payment activity,
    segments and platform sync state."""
    await get_account(session, account_id)
    address = contacts.valid_email(email, "query.email")
    return await contacts.contact_view(session, account_id, address)


@router.post("/unsubscribed", status_code=204, response_class=Response)
async def report_unsubscribed(
    session: DbSession, account_id: AccountIdPath, body: UnsubscribeRequest
) -> Response:
    """The person unsubscribed on the platform: never pushed to a list or emailed again."""
    await get_account(session, account_id)
    await contacts.unsubscribe(session, account_id, contacts.valid_email(body.email, "body.email"))
    return Response(status_code=204)


@router.delete("", status_code=204, response_class=Response)
async def erase_contact(
    session: DbSession, account_id: AccountIdPath, email: EmailQuery
) -> Response:
    """Erasure: the person's data goes; a hashed suppression entry stays."""
    await get_account(session, account_id)
    await contacts.erase(session, account_id, contacts.valid_email(email, "query.email"))
    return Response(status_code=204)
