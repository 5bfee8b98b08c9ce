"""The Constant Contact client against a real local fake of the V3 API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from prometheus_client import REGISTRY
from redis.asyncio import Redis

from stripesync.clients.constant_contact import (
    MAX_IMPORT_BYTES,
    ConstantContactClient,
    PlatformError,
    PlatformQuotaExceeded,
    PlatformThrottled,
    SignUpForm,
    error_from_response,
    parse_error_body,
)
from stripesync.kit.ratelimit import QuotaExhausted, RateLimiter
from tests.clients.conftest import RecordingTokens
from tests.fakes.constant_contact import FakeConstantContact

MakeClient = Callable[..., ConstantContactClient]


# --- error bodies --------------------------------------------------------------------------


def test_error_array_body_gives_first_key_and_all_messages() -> None:
    body = (
        b'[{"error_key": "email_address.invalid", "error_message": "Email is not valid"},'
        b' {"error_key": "first_name.too_long", "error_message": "First name too long"}]'
    )
    assert parse_error_body(body, 400) == (
        "email_address.invalid",
        "Email is not valid; First name too long",
    )


def test_error_single_object_body_is_parsed_too() -> None:
    body = b'{"error_key": "throttled", "error_message": "Too many requests"}'
    assert parse_error_body(body, 429) == ("throttled", "Too many requests")


def test_error_body_that_is_not_json_keeps_status_and_text() -> None:
    assert parse_error_body(b"<html>Bad gateway</html>", 502) == (
        "http_502",
        "<html>Bad gateway</html>",
    )
    assert parse_error_body(b"", 503) == ("http_503", "HTTP 503")


@pytest.mark.parametrize(
    ("status", "body", "kind", "retryable"),
    [
        (429, b'{"error_key": "throttled", "error_message": "slow"}', PlatformThrottled, True),
        (429, b'[{"error_key": "throttled", "error_message": "slow"}]', PlatformThrottled, True),
        (
            429,
            b'{"error_key": "quota_exceeded", "error_message": "daily"}',
            PlatformQuotaExceeded,
            False,
        ),
        (500, b'[{"error_key": "server_error", "error_message": "oops"}]', PlatformError, True),
        (503, b"", PlatformError, True),
        (400, b'[{"error_key": "bad", "error_message": "Bad email"}]', PlatformError, False),
        (404, b'{"error_key": "not_found", "error_message": "gone"}', PlatformError, False),
    ],
)
def test_errors_are_classified_by_status_and_key(
    status: int, body: bytes, kind: type[PlatformError], retryable: bool
) -> None:
    response = httpx.Response(status, content=body)
    error = error_from_response(response, "sign_up_form")
    assert type(error) is kind
    assert error.retryable is retryable
    assert error.status == status


def test_quota_exceeded_defers_to_next_utc_midnight() -> None:
    response = httpx.Response(429, json={"error_key": "quota_exceeded", "error_message": "q"})
    error = error_from_response(response, "find_contact")
    assert isinstance(error, QuotaExhausted)
    now = datetime.now(UTC)
    assert error.retry_at.tzinfo is not None
    assert error.retry_at - now <= timedelta(days=1)
    assert error.retry_at > now
    assert (error.retry_at.hour, error.retry_at.minute, error.retry_at.second) == (0, 0, 0)


# --- token refresh ---------------------------------------------------------------------------


async def test_401_refreshes_the_token_once_and_retries(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.tokens = {"token-new"}
    tokens = RecordingTokens()
    client = make_client(tokens)
    created = await client.create_contact_list("Customers")
    assert created.name == "Customers"
    assert tokens.calls == [False, True]
    assert [(r.status, r.token) for r in fake_cc.api_requests("/contact_lists")] == [
        (401, "token-old"),
        (201, "token-new"),
    ]


async def test_second_401_after_refresh_is_an_error_not_a_loop(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.tokens = set()  # the account's grant is gone: no token works
    tokens = RecordingTokens()
    client = make_client(tokens)
    with pytest.raises(PlatformError) as caught:
        await client.find_contact("a@example.com")
    assert caught.value.status == 401
    assert caught.value.retryable is False
    assert tokens.calls == [False, True]
    assert len(fake_cc.api_requests()) == 2


async def test_concurrent_401s_each_retry_once_with_the_refreshed_token(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.tokens = {"token-new"}
    tokens = RecordingTokens()
    client = make_client(tokens)
    results = await asyncio.gather(*(client.find_contact(f"p{i}@example.com") for i in range(5)))
    assert results == [None] * 5
    statuses = [r.status for r in fake_cc.api_requests("/contacts")]
    assert statuses.count(200) == 5
    assert statuses.count(401) <= 5
    assert tokens.calls.count(True) == statuses.count(401)


# --- retries -----------------------------------------------------------------------------------


async def test_throttled_429_backs_off_and_succeeds(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.inject(429, count=2, error_key="throttled", shape="object")
    client = make_client()
    assert await client.find_contact("a@example.com") is None
    assert [r.status for r in fake_cc.api_requests()] == [429, 429, 200]


async def test_5xx_storm_retries_then_raises_a_retryable_error(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.inject(503, count=10)
    client = make_client(max_attempts=3)
    with pytest.raises(PlatformError) as caught:
        await client.find_contact("a@example.com")
    assert caught.value.retryable is True
    assert caught.value.status == 503
    assert len(fake_cc.api_requests()) == 3


async def test_dropped_connection_is_retried(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    fake_cc.inject(0, count=1)
    client = make_client()
    assert await client.find_contact("a@example.com") is None
    assert [r.status for r in fake_cc.api_requests()] == [0, 200]


async def test_permanent_4xx_is_not_retried_and_carries_the_platform_message(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    lst = await client.create_contact_list("Customers")
    form = SignUpForm(email_address="x" * 60 + "@example.com", list_memberships=[lst.list_id])
    with pytest.raises(PlatformError) as caught:
        await client.sign_up_form(form)
    assert caught.value.status == 400
    assert caught.value.retryable is False
    assert caught.value.message == "email_address is not valid"
    assert len(fake_cc.api_requests("sign_up_form")) == 1


async def test_quota_exceeded_is_not_retried_and_stops_every_worker_for_the_day(
    fake_cc: FakeConstantContact, make_client: MakeClient, redis_url: str
) -> None:
    redis = Redis.from_url(redis_url)
    limiter = RateLimiter(redis, "cc:quota-test", per_second=100, per_day=10_000)
    client = make_client(limiter=limiter)
    fake_cc.inject(429, count=1, error_key="quota_exceeded", shape="object")
    with pytest.raises(PlatformQuotaExceeded):
        await client.find_contact("a@example.com")
    assert len(fake_cc.api_requests()) == 1
    # Our shared budget now knows too: no further call reaches the platform today.
    with pytest.raises(QuotaExhausted):
        await client.find_contact("b@example.com")
    assert len(fake_cc.api_requests()) == 1
    await redis.aclose()


async def test_calls_are_counted_by_endpoint_and_status(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    def count(status: str) -> float:
        value = REGISTRY.get_sample_value(
            "stripesync_platform_calls_total", {"endpoint": "find_contact", "status": status}
        )
        return value or 0.0

    before_ok, before_429 = count("200"), count("429")
    fake_cc.inject(429, count=1)
    await make_client().find_contact("a@example.com")
    assert count("200") == before_ok + 1
    assert count("429") == before_429 + 1


# --- endpoints -----------------------------------------------------------------------------------


async def test_duplicate_list_name_is_looked_up_and_reused(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    first = await client.ensure_contact_list("Repeat customers", "made by stripesync")
    again = await client.ensure_contact_list("Repeat customers")
    assert again.list_id == first.list_id
    assert len(fake_cc.lists) == 1
    assert [(r.method, r.status) for r in fake_cc.api_requests("/contact_lists")] == [
        ("POST", 201),
        ("POST", 409),
        ("GET", 200),
    ]


async def test_existing_custom_field_is_found_by_label(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    first = await client.ensure_custom_field("Lifetime spend", "currency")
    again = await client.ensure_custom_field("Lifetime spend", "currency")
    assert again.custom_field_id == first.custom_field_id
    assert again.name == "Lifetime_spend"
    assert len(fake_cc.custom_fields) == 1


async def test_sign_up_form_gives_explicit_permission_and_returns_the_id(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    lst = await client.create_contact_list("Customers")
    result = await client.sign_up_form(
        SignUpForm(email_address="Ann@Example.com", list_memberships=[lst.list_id])
    )
    assert result.action == "created"
    found = await client.find_contact("ann@example.com")
    assert found is not None
    assert found.contact_id == result.contact_id
    assert found.permission_to_send == "explicit"
    assert found.list_memberships == [lst.list_id]


async def test_json_import_runs_as_an_activity_polled_to_completion(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    lst = await client.create_contact_list("Customers")
    started = await client.contacts_json_import(
        [{"email": "a@example.com", "first_name": "A"}, {"email": "not-an-email"}],
        [lst.list_id],
    )
    assert started.state == "initialized"
    done = await client.wait_for_activity(started.activity_id, interval=0.02)
    assert done.state == "completed"
    assert done.activity_errors == ["Row 1: invalid email address"]
    polls = fake_cc.api_requests("/activities/" + started.activity_id)
    assert len(polls) >= 2  # it really polled: initialized/processing, then completed
    found = await client.find_contact("a@example.com")
    assert found is not None and found.permission_to_send == "implicit"


async def test_failed_activity_is_reported_with_its_errors(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    lst = await client.create_contact_list("Customers")
    fake_cc.fail_next_activities = 1
    started = await client.contacts_json_import([{"email": "a@example.com"}], [lst.list_id])
    done = await client.wait_for_activity(started.activity_id, interval=0.02)
    assert done.state == "failed"
    assert done.activity_errors


async def test_membership_calls_work_on_contact_ids(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    keep = await client.create_contact_list("Keep")
    drop = await client.create_contact_list("Drop")
    signed = await client.sign_up_form(
        SignUpForm(email_address="a@example.com", list_memberships=[keep.list_id, drop.list_id])
    )
    removal = await client.remove_list_memberships([signed.contact_id], [drop.list_id])
    assert (await client.wait_for_activity(removal.activity_id, interval=0.02)).state == (
        "completed"
    )
    found = await client.find_contact("a@example.com")
    assert found is not None and found.list_memberships == [keep.list_id]


async def test_batches_beyond_platform_limits_are_refused_before_any_call(
    fake_cc: FakeConstantContact, make_client: MakeClient
) -> None:
    client = make_client()
    with pytest.raises(ValueError, match="40000"):
        await client.contacts_json_import(
            [{"email": f"c{i}@example.com"} for i in range(40_001)], ["list"]
        )
    big_row = {"email": "a@example.com", "street": "x" * 1000}
    rows = [big_row] * (MAX_IMPORT_BYTES // 1000)
    with pytest.raises(ValueError, match="not under"):
        await client.contacts_json_import(rows, ["list"])
    with pytest.raises(ValueError, match="500"):
        await client.remove_list_memberships([f"id{i}" for i in range(501)], ["list"])
    with pytest.raises(ValueError, match="50"):
        await client.add_list_memberships(["id"], [f"l{i}" for i in range(51)])
    assert fake_cc.api_requests() == []


async def test_fake_drops_import_rows_beyond_its_limits_silently(
    fake_cc: FakeConstantContact, http: httpx.AsyncClient
) -> None:
    # Why the client refuses oversize batches: the platform answers 201 and loses the rest.
    lst_id = (
        await http.post(f"{fake_cc.url}/v3/contact_lists", json={"name": "L"}, headers=_auth())
    ).json()["list_id"]
    rows = [{"email": f"c{i}@example.com"} for i in range(40_005)]
    response = await http.post(
        f"{fake_cc.url}/v3/activities/contacts_json_import",
        json={"import_data": rows, "list_ids": [lst_id]},
        headers=_auth(),
    )
    assert response.status_code == 201
    assert fake_cc.activities[response.json()["activity_id"]].dropped == 5


def _auth() -> dict[str, str]:
    return {"Authorization": "Bearer t"}
