"""Which handler applies which Stripe event type.

Feature modules register handlers with `@handles("type", ...)`; `load_handlers()` imports
them, so this file is the one list of who handles what.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from stripesync.models import StripeConnection, StripeEvent

Handler = Callable[[AsyncSession, StripeEvent, StripeConnection], Awaitable[None]]

_HANDLERS: dict[str, Handler] = {}

# Feature modules whose import registers event handlers or contact hooks
# (stripesync.activity.hooks). Add a module here to wire it in; one line each.
HANDLER_MODULES: tuple[str, ...] = (
    "stripesync.accounts.handlers",
    "stripesync.activity.handlers",
    "stripesync.segments.hooks",
    "stripesync.optin.hooks",
    "stripesync.imports.hooks",
    "stripesync.sync.hooks",
)


def handles(*event_types: str) -> Callable[[Handler], Handler]:
    def register(func: Handler) -> Handler:
        for event_type in event_types:
            if event_type in _HANDLERS and _HANDLERS[event_type] is not func:
                raise RuntimeError(f"two handlers for {event_type}")
            _HANDLERS[event_type] = func
        return func

    return register


def load_handlers() -> None:
    for module in HANDLER_MODULES:
        importlib.import_module(module)


def handler_for(event_type: str) -> Handler | None:
    return _HANDLERS.get(event_type)
