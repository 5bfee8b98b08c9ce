"""Worker jobs of accounts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog

from stripesync.accounts import repository
from stripesync.db import transaction
from stripesync.kit.clock import utcnow

log = structlog.get_logger(__name__)

# Spent OAuth states are kept this long after they expire (operators' view of recent
# connect attempts), then deleted.
STATE_RETENTION = timedelta(days=1)


async def clean_oauth_states(ctx: dict[str, Any]) -> int:
    """Cron: delete the OAuth states that expired more than a day ago (each account's
    latest kept); answers how many."""
    async with transaction(ctx["session_factory"]) as session:
        deleted = await repository.delete_spent_states(session, utcnow() - STATE_RETENTION)
    if deleted:
        log.info("oauth_states_cleaned", deleted=deleted)
    return deleted
