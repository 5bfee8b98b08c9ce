"""A typed client for the Constant Contact V3 endpoints stripesync uses (external-apis.md).

Every call goes through one shared request budget (`kit.ratelimit`), carries a timeout,
refreshes the account's token once on a 401, retries throttling, 5xx and network errors
with jittered backoff, and turns error bodies of both shapes the platform uses (a JSON array
of `{error_key, error_message}` or a single such object) into a `PlatformError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any
from urllib.parse import quote

import httpx
from redis.asyncio import Redis

from stripesync.clients.cc_models import (
    FINISHED_STATES,
    MAX_EMAIL_LENGTH,
    MAX_IMPORT_BYTES,
    MAX_IMPORT_CONTACTS,
    MAX_LISTS_PER_CALL,
    MAX_MEMBERSHIP_CONTACTS,
    MAX_NAME_LENGTH,
    MAX_PHONE_LENGTH,
    Activity,
    ActivityState,
    ContactList,
    CustomField,
    CustomFieldType,
    CustomFieldValue,
    PlatformContact,
    PlatformError,
    PlatformQuotaExceeded,
    PlatformThrottled,
    SignUpForm,
    SignUpResult,
    StreetAddress,
    error_from_response,
    parse_error_body,
)
from stripesync.config import Settings
from stripesync.kit import metrics
from stripesync.kit.ratelimit import RateLimiter

__all__ = [
    "FINISHED_STATES",
    "MAX_EMAIL_LENGTH",
    "MAX_IMPORT_BYTES",
    "MAX_IMPORT_CONTACTS",
    "MAX_LISTS_PER_CALL",
    "MAX_MEMBERSHIP_CONTACTS",
    "MAX_NAME_LENGTH",
    "MAX_PHONE_LENGTH",
    "Activity",
    "ActivityState",
    "ConstantContactClient",
    "ContactList",
    "CustomField",
    "CustomFieldType",
    "CustomFieldValue",
    "PlatformContact",
    "PlatformError",
    "PlatformQuotaExceeded",
    "PlatformThrottled",
    "SignUpForm",
    "SignUpResult",
    "StreetAddress",
    "TokenProvider",
    "constant_contact_limiter",
    "encode_import_body",
    "error_from_response",
    "parse_error_body",
]

# (force_refresh) -> access token. The accounts feature provides one per account
# (`cc_access_token`), refreshing single-flight so rotating refresh tokens are used once.
TokenProvider = Callable[[bool], Awaitable[str]]

DEFAULT_TIMEOUT = httpx.Timeout(30.0, connect=5.0)


# --- the client -----------------------------------------------------------------------------


class ConstantContactClient:
    """One merchant account's view of the V3 API.

    `token` answers the account's access token; called with True it must refresh it (once,
    for everyone: the accounts feature's single-flight refresh). `limiter` is the budget of
    the API key, shared by all workers; without one, calls are not rate-limited (tests only).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        api_base: str,
        token: TokenProvider,
        limiter: RateLimiter | None = None,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        max_attempts: int = 4,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
    ) -> None:
        self.http = http
        self.base_url = api_base.rstrip("/") + "/v3"
        self.token = token
        self.limiter = limiter
        self.timeout = timeout
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap

    @classmethod
    def from_settings(
        cls,
        http: httpx.AsyncClient,
        settings: Settings,
        *,
        token: TokenProvider,
        limiter: RateLimiter | None,
        **options: Any,
    ) -> ConstantContactClient:
        """A client at `settings.cc_api_base` + "/v3"."""
        return cls(http, api_base=settings.cc_api_base, token=token, limiter=limiter, **options)

    # -- contacts --

    async def sign_up_form(self, form: SignUpForm) -> SignUpResult:
        """Create or update a contact by email with EXPLICIT permission; only ever adds lists.

        Use it only for people who confirmed the opt-in email or consented at checkout.
        """
        response = await self._request(
            "sign_up_form",
            "POST",
            "/contacts/sign_up_form",
            json_body=form.model_dump(exclude_none=True),
        )
        return SignUpResult.model_validate(response.json())

    async def find_contact(self, email: str) -> PlatformContact | None:
        """The contact with this email, deleted ones included, with its list memberships."""
        response = await self._request(
            "find_contact",
            "GET",
            "/contacts",
            params={"email": email, "status": "all", "include": "list_memberships"},
        )
        contacts = response.json().get("contacts") or []
        return PlatformContact.from_api(contacts[0]) if contacts else None

    # -- bulk activities --

    async def contacts_json_import(
        self, import_data: Sequence[Mapping[str, str]], list_ids: Sequence[str]
    ) -> Activity:
        """Start an import (new contacts get IMPLICIT permission) onto `list_ids`.

        Refuses (ValueError) what the platform would silently truncate: more than 40,000
        contacts or a body of 4 MB or more; and 0 or more than 50 lists.
        """
        if len(import_data) > MAX_IMPORT_CONTACTS:
            raise ValueError(f"at most {MAX_IMPORT_CONTACTS} contacts per import")
        _check_lists(list_ids)
        body = encode_import_body(import_data, list_ids)
        if len(body) >= MAX_IMPORT_BYTES:
            raise ValueError(f"import body of {len(body)} bytes is not under {MAX_IMPORT_BYTES}")
        response = await self._request(
            "contacts_json_import", "POST", "/activities/contacts_json_import", content=body
        )
        return Activity.model_validate(response.json())

    async def add_list_memberships(
        self, contact_ids: Sequence[str], list_ids: Sequence[str]
    ) -> Activity:
        """Start adding up to 500 contacts (by platform id) to up to 50 lists."""
        return await self._memberships("add_list_memberships", contact_ids, list_ids)

    async def remove_list_memberships(
        self, contact_ids: Sequence[str], list_ids: Sequence[str]
    ) -> Activity:
        """Start removing up to 500 contacts (by platform id) from up to 50 lists."""
        return await self._memberships("remove_list_memberships", contact_ids, list_ids)

    async def get_activity(self, activity_id: str) -> Activity:
        """The current status of a bulk activity."""
        response = await self._request(
            "get_activity", "GET", f"/activities/{_path_segment(activity_id)}"
        )
        return Activity.model_validate(response.json())

    async def wait_for_activity(
        self,
        activity_id: str,
        *,
        interval: float = 2.0,
        max_interval: float = 30.0,
        give_up_after: float = 3600.0,
    ) -> Activity:
        """Poll an activity until it finishes (completed, failed, cancelled, timed_out).

        The interval grows by half each poll, up to `max_interval`, to spare the daily quota.
        Raises TimeoutError after `give_up_after` seconds.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + give_up_after
        while True:
            activity = await self.get_activity(activity_id)
            if activity.finished:
                return activity
            if loop.time() + interval > deadline:
                raise TimeoutError(f"activity {activity_id} still {activity.state}")
            await asyncio.sleep(interval)
            interval = min(interval * 1.5, max_interval)

    # -- lists and custom fields --

    async def create_contact_list(self, name: str, description: str = "") -> ContactList:
        """Create a list; a duplicate name is a 409 `PlatformError`."""
        response = await self._request(
            "create_contact_list",
            "POST",
            "/contact_lists",
            json_body={"name": name, "description": description},
        )
        return ContactList.model_validate(response.json())

    async def find_contact_list(self, name: str) -> ContactList | None:
        """The list with exactly this name, if any."""
        response = await self._request(
            "find_contact_list", "GET", "/contact_lists", params={"name": name}
        )
        for item in response.json().get("lists") or []:
            if item.get("name") == name:
                return ContactList.model_validate(item)
        return None

    async def delete_contact_list(self, list_id: str) -> Activity | None:
        """Start deleting a list (its members stay contacts, just not on it); None when the
        platform has no such list any more (404), which is as good as deleted."""
        try:
            response = await self._request(
                "delete_contact_list", "DELETE", f"/contact_lists/{_path_segment(list_id)}"
            )
        except PlatformError as exc:
            if exc.status == 404:
                return None
            raise
        return Activity.model_validate(response.json()) if response.content else None

    async def ensure_contact_list(self, name: str, description: str = "") -> ContactList:
        """The list named `name`: created, or found when the name is taken (409)."""
        try:
            return await self.create_contact_list(name, description)
        except PlatformError as exc:
            if exc.status != 409:
                raise
        found = await self.find_contact_list(name)
        if found is None:
            raise PlatformError(
                409,
                "conflict",
                f"list name {name!r} is taken but no list has it",
                retryable=True,
                endpoint="find_contact_list",
            )
        return found

    async def create_custom_field(self, label: str, type_: CustomFieldType) -> CustomField:
        """Create a contact custom field (100 per account)."""
        response = await self._request(
            "create_custom_field",
            "POST",
            "/contact_custom_fields",
            json_body={"label": label, "type": type_},
        )
        return CustomField.model_validate(response.json())

    async def list_custom_fields(self) -> list[CustomField]:
        """The account's contact custom fields."""
        response = await self._request(
            "list_custom_fields", "GET", "/contact_custom_fields", params={"limit": 100}
        )
        return [CustomField.model_validate(f) for f in response.json().get("custom_fields") or []]

    async def ensure_custom_field(self, label: str, type_: CustomFieldType) -> CustomField:
        """The custom field labelled `label`: created, or found when it already exists."""
        try:
            return await self.create_custom_field(label, type_)
        except PlatformError as exc:
            if exc.retryable or exc.status in (401, 403):
                raise
            conflict = exc
        for field in await self.list_custom_fields():
            if field.label == label:
                return field
        raise conflict

    # -- plumbing --

    async def _memberships(
        self, endpoint: str, contact_ids: Sequence[str], list_ids: Sequence[str]
    ) -> Activity:
        if not 1 <= len(contact_ids) <= MAX_MEMBERSHIP_CONTACTS:
            raise ValueError(f"1 to {MAX_MEMBERSHIP_CONTACTS} contact ids per call")
        _check_lists(list_ids)
        response = await self._request(
            endpoint,
            "POST",
            f"/activities/{endpoint}",
            json_body={"source": {"contact_ids": list(contact_ids)}, "list_ids": list(list_ids)},
        )
        return Activity.model_validate(response.json())

    async def _request(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        if json_body is not None:
            content = json.dumps(json_body, separators=(",", ":")).encode()
        headers = {"Accept": "application/json"}
        if content is not None:
            headers["Content-Type"] = "application/json"
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            headers["Authorization"] = f"Bearer {await self.token(refreshed)}"
            try:
                async with self._slot():
                    response = await self.http.request(
                        method,
                        self.base_url + path,
                        params=params,
                        content=content,
                        headers=headers,
                        timeout=self.timeout,
                    )
            except httpx.TransportError as exc:  # timeouts, refused connections, resets
                metrics.PLATFORM_CALLS.labels(endpoint, "network_error").inc()
                error = PlatformError(
                    None, "network_error", type(exc).__name__, retryable=True, endpoint=endpoint
                )
                if attempt >= self.max_attempts:
                    raise error from exc
                await asyncio.sleep(self._backoff(attempt, None))
                continue
            metrics.PLATFORM_CALLS.labels(endpoint, str(response.status_code)).inc()
            if response.status_code < 400:
                return response
            if response.status_code == 401 and not refreshed:
                # The token expired or was rotated: refresh once, then try once more.
                refreshed = True
                attempt -= 1
                continue
            error = error_from_response(response, endpoint)
            if isinstance(error, PlatformQuotaExceeded):
                if self.limiter is not None:
                    await self.limiter.exhaust_today()
                raise error
            if not error.retryable or attempt >= self.max_attempts:
                raise error
            await asyncio.sleep(self._backoff(attempt, response.headers.get("Retry-After")))

    def _slot(self) -> AbstractAsyncContextManager[object]:
        """The shared budget's slot for one request, held until its answer is in."""
        if self.limiter is None:
            return contextlib.nullcontext()
        hold = self.timeout.read or 60.0
        return self.limiter.slot(hold_seconds=hold + (self.timeout.connect or 0) + 5.0)

    def _backoff(self, attempt: int, retry_after: str | None) -> float:
        """Exponential backoff with full jitter; a Retry-After in seconds is a floor."""
        delay = random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** (attempt - 1)))
        if retry_after is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(retry_after), self.backoff_cap))
        return delay


def encode_import_body(import_data: Sequence[Mapping[str, str]], list_ids: Sequence[str]) -> bytes:
    """The exact bytes `contacts_json_import` sends, so callers can size batches."""
    body = {"import_data": list(import_data), "list_ids": list(list_ids)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def constant_contact_limiter(redis: Redis, settings: Settings) -> RateLimiter:
    """The budget of our Constant Contact API key, shared by every worker process."""
    return RateLimiter(
        redis,
        f"cc:{settings.cc_client_id or 'default'}",
        per_second=settings.cc_requests_per_second,
        per_day=settings.cc_requests_per_day,
        margin_seconds=settings.cc_rate_margin_seconds,
        api="constant_contact",
    )


def _check_lists(list_ids: Sequence[str]) -> None:
    if not 1 <= len(list_ids) <= MAX_LISTS_PER_CALL:
        raise ValueError(f"1 to {MAX_LISTS_PER_CALL} list ids per call")


def _path_segment(value: str) -> str:
    # Ids come from the platform, but never let one reshape the URL path.
    return quote(value, safe="")
