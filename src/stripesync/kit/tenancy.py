"""Account-scoped routes: the validated account id in the path and its account row.

Every `/v1/accounts/{account_id}/...` query filters by this id; nothing of one account is
reachable through another's paths.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path
from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.kit.errors import ApiError
from stripesync.models import Account

ACCOUNT_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"

AccountIdPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ACCOUNT_ID_PATTERN,
        description="The platform's account id: 1-64 chars of [A-Za-z0-9_-].",
    ),
]


async def get_account(
    session: AsyncSession, account_id: str, *, for_update: bool = False
) -> Account:
    """The account, or 404 `account_not_found`."""
    account = await session.get(Account, account_id, with_for_update=for_update)
    if account is None:
        raise ApiError(404, "account_not_found", f"No account {account_id}.")
    return account
