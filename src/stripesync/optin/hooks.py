"""Wires the opt-in feature into the others at import: the contacts-changed hook that sends
the one email, and the activation check behind POST /stripe/connect (mode optin).

Imported by the worker and the API through webhooks.dispatch.HANDLER_MODULES."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.accounts.oauth import set_optin_activation_check
from stripesync.activity.hooks import on_contacts_changed
from stripesync.optin import service


@on_contacts_changed
async def send_optin_email_to_new_contacts(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> None:
    await service.request_optin_emails(session, account_id, contact_ids)


set_optin_activation_check(service.is_activated)
