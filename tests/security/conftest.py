"""Shared by the security tests: the JSON-body and account-scoped routes of the app's own
route table, so routes added later are covered without editing these tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from tests.accounts.conftest import account, stripe_oauth  # noqa: F401 - fixtures used here too
from tests.optin.conftest import mail_settings, smtp  # noqa: F401 - fixtures used here too
from tests.security.seed import RETURN_URL, Seeded


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with {placeholders}
    has_json_body: bool

    @property
    def label(self) -> str:
        return f"{self.method} {self.path}"

    def placeholders(self) -> list[str]:
        return re.findall(r"{(\w+)}", self.path)


def operations(app: FastAPI) -> list[Operation]:
    """Every (method, path) the app serves, read from its route table (not openapi.yaml,
    so a route left out of the docs is covered too)."""
    found = []
    for context in iter_route_contexts(app.router.routes):
        route = context.route
        if not isinstance(route, APIRoute):
            continue
        for method in sorted(route.methods - {"HEAD"}):
            found.append(Operation(method, route.path, route.body_field is not None))
    return found


RULE = {"field": "purchase_count", "op": "gte", "value": 1}


def bodies(b: Seeded) -> dict[str, dict[str, Any]]:
    """A valid body per JSON route template; pointed at B wherever the body names something."""
    return {
        "PUT /v1/accounts/{account_id}": {"name": "A renamed", "owner_email": "o@acc-a.example"},
        "POST /v1/accounts/{account_id}/contacts/unsubscribed": {"email": b.email},
        "POST /v1/accounts/{account_id}/stripe/connect": {
            "mode": "direct",
            "prior_consent_affirmed": True,
            "affirmed_by": "user-1",
            "return_url": RETURN_URL,
        },
        "POST /v1/accounts/{account_id}/segments": {"name": "A's new", "rule": RULE},
        "POST /v1/accounts/{account_id}/segments/preview": {"rule": RULE},
        "PUT /v1/accounts/{account_id}/segments/{segment_id}": {"name": "hijacked", "rule": RULE},
        "PUT /v1/accounts/{account_id}/segment-settings": {"recent_days": 7},
        "PUT /v1/accounts/{account_id}/optin-email": {
            "subject": "Hello",
            "from_name": "A",
            "from_email": "from@acc-a.example",
            "reply_to": "reply@acc-a.example",
            "intro": "Hi",
        },
    }
