"""Oversized, deeply nested and unreadable JSON is refused with the contract's error shape on
every route that takes a JSON body (found in the app's route table), never with a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import respx

from stripesync.app import MAX_BODY_BYTES, create_app
from stripesync.config import Settings
from tests.conftest import platform_headers
from tests.security.conftest import Operation, bodies, operations
from tests.security.seed import fake_stripe_oauth, seed_account

JSON_ROUTES = [op for op in operations(create_app(Settings())) if op.has_json_body]
ACCOUNT = "acc_bodies"


def concrete(op: Operation) -> str:
    return op.path.replace("{account_id}", ACCOUNT).replace("{segment_id}", "seg_1")


def assert_error_shape(response: httpx.Response, status: int | tuple[int, ...]) -> None:
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert set(error) == {"code", "message", "details"}
    assert isinstance(error["code"], str) and error["message"]


@pytest.fixture
async def client(app_client: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    body = {"name": "Bodies", "owner_email": "owner@bodies.example"}
    put = await app_client.put(f"/v1/accounts/{ACCOUNT}", json=body, headers=platform_headers)
    assert put.status_code == 201
    yield app_client


@pytest.fixture
def outside() -> Iterator[respx.MockRouter]:
    with respx.mock(assert_all_called=False, assert_all_mocked=True) as router:
        fake_stripe_oauth(router)
        yield router


def test_the_route_table_has_json_routes() -> None:
    # Guards the generated parametrisation: an empty list would make the tests below vacuous.
    labels = {op.label for op in JSON_ROUTES}
    assert "PUT /v1/accounts/{account_id}" in labels
    assert "POST /v1/accounts/{account_id}/segments/preview" in labels
    assert len(JSON_ROUTES) >= 8


def _big_body(size: int) -> bytes:
    filler = "x" * (size - len(b'{"name": ""}'))
    body = json.dumps({"name": filler}).encode()
    assert len(body) == size
    return body


@pytest.mark.parametrize("op", JSON_ROUTES, ids=lambda op: op.label)
async def test_body_over_1_mib_is_413(client: httpx.AsyncClient, op: Operation) -> None:
    body = _big_body(MAX_BODY_BYTES + 1)
    response = await client.request(
        op.method,
        concrete(op),
        content=body,
        headers={**platform_headers, "Content-Type": "application/json"},
    )
    assert_error_shape(response, 413)
    assert response.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("op", JSON_ROUTES, ids=lambda op: op.label)
async def test_streamed_body_over_1_mib_without_a_length_is_413(
    client: httpx.AsyncClient, op: Operation
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        body = _big_body(MAX_BODY_BYTES + 1)
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = await client.request(
        op.method,
        concrete(op),
        content=chunks(),
        headers={**platform_headers, "Content-Type": "application/json"},
    )
    assert "content-length" not in {k.lower() for k in response.request.headers}
    assert_error_shape(response, 413)


async def test_body_of_exactly_1_mib_is_read(client: httpx.AsyncClient) -> None:
    # The limit is the limit: a body at it reaches validation (422 for the long name).
    response = await client.put(
        f"/v1/accounts/{ACCOUNT}",
        content=_big_body(MAX_BODY_BYTES),
        headers={**platform_headers, "Content-Type": "application/json"},
    )
    assert_error_shape(response, 422)


def nested(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


def nested_objects(depth: int) -> bytes:
    return ('{"a":' * depth + "1" + "}" * depth).encode()


BAD_BODIES = {
    "array_nested_10000": nested(10_000),
    "object_nested_10000": nested_objects(10_000),
    "rule_nested_900": b'{"name": "n", "rule": ' + nested_objects(900) + b"}",
    "rule_groups_nested_900": (
        b'{"name": "n", "rule": '
        + b'{"not": ' * 900
        + b'{"field": "purchase_count", "op": "gte", "value": 1}'
        + b"}" * 900
        + b"}"
    ),
    "not_utf8": b'{"name": "\xff\xfe"}',
    "huge_integer": b'{"name": "n", "rule": {"field": "purchase_count", "op": "gte", "value": '
    + b"9" * 5000
    + b"}}",
    "float_overflow": b'{"name": "n", "rule": {"field": "purchase_count", "op": "gte", '
    b'"value": 1e400}}',
    "nul_in_string": b'{"name": "a\\u0000b", "rule": {"field": "country", "op": "eq", '
    b'"value": "\\u0000"}}',
    "lone_surrogate": b'{"name": "\\ud800", "owner_email": "\\udfff@x.example"}',
    "truncated": b'{"name": "n", "rule": {"field": ',
    "empty": b"",
    "scalar": b"42",
}


@pytest.mark.parametrize("op", JSON_ROUTES, ids=lambda op: op.label)
async def test_nested_unreadable_and_odd_json_is_refused_without_a_500(
    client: httpx.AsyncClient, op: Operation
) -> None:
    for name, body in BAD_BODIES.items():
        response = await client.request(
            op.method,
            concrete(op),
            content=body,
            headers={**platform_headers, "Content-Type": "application/json"},
        )
        assert response.status_code < 500, (name, response.status_code, response.text[:300])
        if response.status_code >= 400:
            assert_error_shape(response, (400, 404, 409, 413, 422))
        if name in {"array_nested_10000", "object_nested_10000", "not_utf8", "truncated"}:
            # Unreadable JSON is a body failing validation: the documented 422.
            assert response.status_code == 422, name
            assert response.json()["error"]["code"] == "validation_error"


def _with_text(body: Any, text: str) -> list[Any]:
    """Copies of `body`, each with `text` put into one of its strings (keys kept)."""
    if isinstance(body, str):
        return [body[:1] + text + body[1:], text]
    if isinstance(body, dict):
        out = []
        for key, value in body.items():
            out += [{**body, key: v} for v in _with_text(value, text)]
        return out
    if isinstance(body, list):
        return [
            [*body[:i], v, *body[i + 1 :]]
            for i, item in enumerate(body)
            for v in _with_text(item, text)
        ]
    return []


async def test_nul_and_lone_surrogates_in_any_string_are_refused_without_a_500(
    app_client: httpx.AsyncClient, worker_ctx: dict[str, Any], outside: respx.MockRouter
) -> None:
    # Postgres text holds neither NUL nor unpaired surrogates; JSON can carry both.
    seeded = await seed_account(app_client, worker_ctx, "acc_text")
    known = bodies(seeded)
    ids = {"account_id": seeded.account_id, "segment_id": seeded.segment_id}
    for op in JSON_ROUTES:
        if not op.path.startswith("/v1/accounts/"):
            continue
        assert op.label in known, f"{op.label}: add a valid body to conftest.bodies()"
        path = op.path.format(**ids)
        for text in ("\u0000", "\ud800", "a\udfffb"):
            for body in _with_text(known[op.label], text):
                content = json.dumps(body).encode()  # ascii: surrogates as \\u escapes
                response = await app_client.request(
                    op.method,
                    path,
                    content=content,
                    headers={**platform_headers, "Content-Type": "application/json"},
                )
                assert response.status_code < 500, (op.label, body, response.text[:300])
