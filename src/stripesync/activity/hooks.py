"""What happens after contacts change, wired without the activity code knowing who listens.

Apply functions (webhooks and the historical import alike) call `contacts_changed()` with
the ids of the contacts they touched, inside the same transaction. Later features register
here: segments recompute those contacts, opt-in sends its one email, sync marks them.
Hooks run in registration order; each must be idempotent (a job may run twice).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection

from sqlalchemy.ext.asyncio import AsyncSession

ContactHook = Callable[[AsyncSession, str, Collection[int]], Awaitable[None]]

_HOOKS: list[ContactHook] = []


def on_contacts_changed(hook: ContactHook) -> ContactHook:
    """Register `hook(session, account_id, contact_ids)`; use as a decorator."""
    if hook not in _HOOKS:
        _HOOKS.append(hook)
    return hook


async def contacts_changed(
    session: AsyncSession, account_id: str, contact_ids: Collection[int]
) -> None:
    if not contact_ids:
        return
    for hook in _HOOKS:
        await hook(session, account_id, contact_ids)
