"""Cross-account access and bearer tokens, for every route of the app's route table.

Accounts A and B both have data behind every kind of id (tests/security/seed.py). Every
`/v1/accounts/{account_id}/...` route is called with A's id in the path and B's ids
everywhere else (segment ids in the path, B's contact email in queries and bodies): what
points at B's things is 404, no answer shows anything of B's, and B's rows in every
table are exactly as before. A route with a placeholder or a JSON body this file does not
know fails the test, so new routes get covered rather than skipped.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx
from fastapi.routing import APIRoute, iter_route_contexts
from sqlalchemy import Table, text

from stripesync.app import create_app
from stripesync.config import Settings
from stripesync.db import SessionFactory
from stripesync.models import Base
from tests.conftest import ops_headers, platform_headers
from tests.security.conftest import Operation, bodies, operations
from tests.security.seed import Seeded, fake_stripe_oauth, seed_account

APP = create_app(Settings())
ACCOUNT_ROUTES = [op for op in operations(APP) if op.path.startswith("/v1/accounts/{account_id}")]
OPS_ROUTES = [op for op in operations(APP) if op.path.startswith(("/v1/jobs", "/v1/ops"))]
# Routes anyone may call: the contract's public ones, guarded by signatures or tokens in
# the URL, and the docs. Every other route must refuse a request without a bearer token.
PUBLIC_PREFIXES = ("/webhooks/stripe", "/oauth/stripe/callback", "/optin/")
PUBLIC_PATHS = {"/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/redoc"}
PUBLIC_PATHS |= {"/docs/oauth2-redirect"}


def b_ids(b: Seeded) -> dict[str, str]:
    """B's id for each path placeholder other than account_id."""
    return {"segment_id": b.segment_id}


def markers(b: Seeded) -> list[str]:
    """Strings that may appear only in answers about B."""
    return [
        b.account_id,
        b.email,
        b.unsubscribed_email,
        b.stripe_account,
        b.job_id,
        f"Merchant {b.account_id}",
        f"owner@{b.account_id.replace('_', '-')}.example",
    ]


def segment_ids(value: Any) -> set[str]:
    """Ids of segments anywhere in an answer (they are small integers: not text-searchable)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("id", "segment_id") and isinstance(item, str | int):
                found.add(str(item))
            found |= segment_ids(item)
    elif isinstance(value, list):
        for item in value:
            found |= segment_ids(item)
    return found


def query_params(op: Operation, b: Seeded) -> dict[str, str]:
    route = next(
        c.route
        for c in iter_route_contexts(APP.router.routes)
        if isinstance(c.route, APIRoute)
        and c.route.path == op.path
        and op.method in c.route.methods
    )
    params = {}
    for field in route.dependant.query_params:
        if field.name == "email":
            params["email"] = b.email
        elif field.name == "purge":
            params["purge"] = "true"  # the variant that deletes
        elif field.field_info.is_required():
            raise AssertionError(f"{op.label}: no value for required query {field.name!r}")
    return params


def _scope(table: Table) -> str:
    """The WHERE clause that selects one account's rows of `table`."""
    if table.name == "accounts":
        return "t.id = :account"
    if table.name == "stripe_events":
        return "t.account = :stripe_account"
    if "account_id" in table.c:
        return "t.account_id = :account"
    for column in table.c:
        for fk in column.foreign_keys:
            parent = fk.column.table
            if "account_id" in parent.c:
                return (
                    f't."{column.name}" IN (SELECT "{fk.column.name}" FROM "{parent.name}" '
                    "WHERE account_id = :account)"
                )
    raise AssertionError(f"table {table.name} has no account scope: teach _scope about it")


async def snapshot(factory: SessionFactory, seeded: Seeded) -> dict[str, list[str]]:
    """Every row of every table that belongs to the account, as JSON text."""
    rows: dict[str, list[str]] = {}
    params = {"account": seeded.account_id, "stripe_account": seeded.stripe_account}
    async with factory() as session:
        for table in Base.metadata.sorted_tables:
            sql = f'SELECT to_jsonb(t)::text FROM "{table.name}" t WHERE {_scope(table)} ORDER BY 1'
            rows[table.name] = list((await session.execute(text(sql), params)).scalars())
    return rows


@pytest.fixture
def outside() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        fake_stripe_oauth(router)
        yield router


@pytest.fixture
async def two_accounts(
    app_client: httpx.AsyncClient, worker_ctx: dict[str, Any], outside: respx.MockRouter
) -> AsyncIterator[tuple[Seeded, Seeded]]:
    a = await seed_account(app_client, worker_ctx, "acc_a")
    b = await seed_account(app_client, worker_ctx, "acc_b")
    yield a, b


def test_route_table_is_read() -> None:
    labels = {op.label for op in ACCOUNT_ROUTES}
    assert "GET /v1/accounts/{account_id}/segments/{segment_id}/members" in labels
    assert "DELETE /v1/accounts/{account_id}/contacts" in labels
    assert len(ACCOUNT_ROUTES) >= 20 and len(OPS_ROUTES) >= 4


def concrete(op: Operation, account_id: str, ids: dict[str, str]) -> str:
    path = op.path.replace("{account_id}", account_id)
    for name in re.findall(r"{(\w+)}", path):
        if name not in ids:
            raise AssertionError(f"{op.label}: give B's id for {{{name}}} in b_ids()")
        path = path.replace(f"{{{name}}}", ids[name])
    return path


_ORDER = {"GET": 0, "POST": 1, "PUT": 2, "DELETE": 3}  # destructive calls last


async def test_no_route_reads_or_changes_another_accounts_things(
    app_client: httpx.AsyncClient,
    two_accounts: tuple[Seeded, Seeded],
    session_factory: SessionFactory,
) -> None:
    a, b = two_accounts
    # The ids are real: through B's own paths they answer.
    for path, params in (
        (f"/v1/accounts/{b.account_id}/segments/{b.segment_id}/members", {}),
        (f"/v1/accounts/{b.account_id}/contacts", {"email": b.email}),
    ):
        assert (await app_client.get(path, params=params, headers=platform_headers)).is_success

    before = await snapshot(session_factory, b)
    assert before["contacts"] and before["segments"] and before["stripe_connections"]
    assert before["jobs"] and before["stripe_customers"] and before["optin_email_settings"]
    known_bodies = bodies(b)
    results = {}
    for op in sorted(ACCOUNT_ROUTES, key=lambda op: (_ORDER.get(op.method, 9), op.path)):
        kwargs: dict[str, Any] = {"params": query_params(op, b), "headers": platform_headers}
        if op.has_json_body:
            assert op.label in known_bodies, f"{op.label}: add a valid body to bodies()"
            kwargs["json"] = known_bodies[op.label]
        path = concrete(op, a.account_id, b_ids(b))
        response = await app_client.request(op.method, path, **kwargs)
        results[op.label] = response.status_code
        assert response.status_code < 500, (op.label, response.text)
        for marker in markers(b):
            assert marker not in response.text, (op.label, marker, response.text[:500])
        if response.headers.get("content-type", "").startswith("application/json"):
            assert b.segment_id not in segment_ids(response.json()), op.label
        points_at_b = len(op.placeholders()) > 1 or (
            op.method == "GET" and "email" in kwargs["params"]
        )
        if points_at_b:
            assert response.status_code == 404, (op.label, response.status_code, response.text)
        assert await snapshot(session_factory, b) == before, f"{op.label} changed B"
    assert len(results) == len(ACCOUNT_ROUTES)


UNAUTHORISED = {
    "no header": {},
    "empty bearer": {"Authorization": "Bearer "},
    "basic scheme": {"Authorization": "Basic cGxhdGZvcm0="},
    "token with a suffix": {"Authorization": platform_headers["Authorization"] + "x"},
    "token prefix": {"Authorization": platform_headers["Authorization"][:-1]},
}


async def test_account_routes_need_the_platform_token_and_refuse_the_ops_token(
    app_client: httpx.AsyncClient,
    two_accounts: tuple[Seeded, Seeded],
    session_factory: SessionFactory,
) -> None:
    a, b = two_accounts
    before = (await snapshot(session_factory, a), await snapshot(session_factory, b))
    known_bodies = bodies(b)
    wrong = {**UNAUTHORISED, "ops token": ops_headers}
    for op in ACCOUNT_ROUTES:
        path = concrete(op, a.account_id, {"segment_id": a.segment_id})
        body = known_bodies.get(op.label)
        for name, headers in wrong.items():
            response = await app_client.request(
                op.method, path, params=query_params(op, a), json=body, headers=headers
            )
            assert response.status_code == 401, (op.label, name, response.status_code)
            assert response.json()["error"]["code"] == "unauthorized"
    after = (await snapshot(session_factory, a), await snapshot(session_factory, b))
    assert after == before


async def test_ops_routes_need_the_ops_token_and_refuse_the_platform_token(
    app_client: httpx.AsyncClient, two_accounts: tuple[Seeded, Seeded]
) -> None:
    a, _ = two_accounts
    ids = {"job_id": a.job_id, "event_id": a.event_id}
    for op in OPS_ROUTES:
        path = concrete(op, a.account_id, ids)
        for name, headers in {**UNAUTHORISED, "platform token": platform_headers}.items():
            response = await app_client.request(op.method, path, headers=headers)
            assert response.status_code == 401, (op.label, name, response.status_code)
        assert (await app_client.request(op.method, path, headers=ops_headers)).is_success


def test_every_route_but_the_public_ones_is_behind_a_token() -> None:
    for op in operations(APP):
        public = op.path in PUBLIC_PATHS or op.path.startswith(PUBLIC_PREFIXES)
        guarded = op in ACCOUNT_ROUTES or op in OPS_ROUTES
        assert public or guarded, f"{op.label} is neither public nor under a token"


async def test_routes_outside_the_public_list_refuse_requests_without_a_token(
    app_client: httpx.AsyncClient,
) -> None:
    for op in operations(APP):
        if op.path in PUBLIC_PATHS or op.path.startswith(PUBLIC_PREFIXES):
            continue
        path = re.sub(r"{\w+}", "x1", op.path)
        response = await app_client.request(op.method, path)
        assert response.status_code == 401, (op.label, response.status_code)
