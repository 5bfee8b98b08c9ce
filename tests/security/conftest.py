"""Shared by the security tests: the JSON-body and account-scoped routes of the app's own
route table, so routes added later are covered without editing these tests."""

from __future__ import annotations

import re
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from tests.accounts.conftest import account, stripe_oauth  # noqa: F401 - fixtures used here too
from tests.optin.conftest import mail_settings, smtp  # noqa: F401 - fixtures used here too


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
