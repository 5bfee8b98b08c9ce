"""A thin typed wrapper over Stripe's HTTP APIs (httpx): Connect OAuth and the REST API.

Errors come in two kinds, so callers can tell the merchant the right thing:
- `StripeError`: Stripe answered and refused (`invalid_grant`, `invalid_request`, a 4xx).
  Retrying the same request will not help.
- `StripeUnavailable`: 5xx, 429, a timeout or a network error. Retrying later may help.
`Stripe-Should-Retry` overrides the status code's meaning (external-apis.md).

URLs come from settings (`STRIPESYNC_STRIPE_*`), so the same code serves classic Connect
OAuth and Stripe Apps' OAuth (expiring access tokens with rotating refresh tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from stripesync.config import Settings

RETRYABLE_STATUS = frozenset({409, 429, 500, 502, 503, 504})


class StripeError(Exception):
    """Stripe refused the request; `code` is Stripe's error code (e.g. `invalid_grant`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class StripeUnavailable(Exception):
    """Stripe could not be reached or failed on its side; the request may be retried.

    `status` is the HTTP status when Stripe answered (429 = rate limited), else None."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StripeList:
    """One page of a list endpoint: objects newest first, and whether more follow."""

    data: list[dict[str, Any]]
    has_more: bool

    @property
    def last_id(self) -> str | None:
        """The `starting_after` cursor of the next page."""
        return str(self.data[-1]["id"]) if self.data else None


@dataclass(frozen=True)
class TokenGrant:
    """A token response of the OAuth token endpoint. Secrets: never log an instance."""

    access_token: str
    refresh_token: str | None
    stripe_user_id: str
    livemode: bool
    scope: str | None
    expires_in: int | None  # seconds; None for classic Connect tokens (they do not expire)

    def __repr__(self) -> str:  # keep tokens out of tracebacks and logs
        return f"TokenGrant(stripe_user_id={self.stripe_user_id!r}, livemode={self.livemode})"


class StripeClient:
    """Stripe's OAuth endpoints and REST API for one platform (its secret key)."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self._http = http
        self._settings = settings

    def _secret_key(self) -> str:
        self._settings.require("stripe_secret_key")
        assert self._settings.stripe_secret_key is not None
        return self._settings.stripe_secret_key.get_secret_value()

    async def _send(
        self,
        method: str,
        url: str,
        *,
        data: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            response = await self._http.request(
                method,
                url,
                data=data,
                params=params,
                headers=headers,
                auth=httpx.BasicAuth(self._secret_key(), ""),
            )
        except httpx.HTTPError as exc:
            raise StripeUnavailable(f"{type(exc).__name__} calling Stripe") from exc
        should_retry = response.headers.get("stripe-should-retry")
        retryable = response.status_code in RETRYABLE_STATUS or response.status_code >= 500
        if should_retry is not None:
            retryable = should_retry.lower() == "true"
        if response.is_success:
            try:
                body = response.json()
            except ValueError as exc:
                raise StripeUnavailable("Stripe answered with a body that is not JSON") from exc
            if not isinstance(body, dict):
                raise StripeUnavailable("Stripe answered with an unexpected body")
            return body
        if retryable:
            raise StripeUnavailable(f"Stripe answered {response.status_code}", response.status_code)
        code, message = _error_of(response)
        raise StripeError(response.status_code, code, message)

    # --- Connect OAuth -------------------------------------------------------------------

    async def exchange_code(self, code: str) -> TokenGrant:
        """`grant_type=authorization_code`: the merchant's authorization code for tokens."""
        body = await self._send(
            "POST",
            self._settings.stripe_oauth_token_url,
            data={"grant_type": "authorization_code", "code": code},
        )
        return _grant(body)

    async def refresh_token(self, refresh_token: str) -> TokenGrant:
        """`grant_type=refresh_token`: a new pair (the refresh token may rotate)."""
        body = await self._send(
            "POST",
            self._settings.stripe_oauth_token_url,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
        )
        return _grant(body)

    async def deauthorize(self, stripe_user_id: str) -> None:
        """Revoke the platform's access to a connected account."""
        self._settings.require("stripe_client_id")
        assert self._settings.stripe_client_id is not None
        await self._send(
            "POST",
            self._settings.stripe_oauth_deauthorize_url,
            data={"client_id": self._settings.stripe_client_id, "stripe_user_id": stripe_user_id},
        )

    # --- REST API ------------------------------------------------------------------------

    async def get(
        self, path: str, *, stripe_account: str | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """`GET {STRIPE_API_BASE}{path}` (path starts with `/v1/`), on behalf of a connected
        account when `stripe_account` is given (the `Stripe-Account` header)."""
        headers = {"Stripe-Account": stripe_account} if stripe_account else None
        url = self._settings.stripe_api_base.rstrip("/") + path
        return await self._send("GET", url, params=params, headers=headers)

    async def list_page(
        self,
        path: str,
        *,
        stripe_account: str,
        limit: int = 100,
        starting_after: str | None = None,
        created_gte: int | None = None,
        created_lt: int | None = None,
        params: dict[str, Any] | None = None,
    ) -> StripeList:
        """One page of a list endpoint (`/v1/customers`, `/v1/charges`, ...), newest first,
        within a `created` window (unix seconds, `[gte, lt)`), after the `starting_after`
        cursor. Never the Search API: it lags behind and has its own, lower limit."""
        query: dict[str, Any] = {"limit": limit, **(params or {})}
        if starting_after is not None:
            query["starting_after"] = starting_after
        if created_gte is not None:
            query["created[gte]"] = created_gte
        if created_lt is not None:
            query["created[lt]"] = created_lt
        body = await self.get(path, stripe_account=stripe_account, params=query)
        data = body.get("data")
        if not isinstance(data, list) or not all(isinstance(o, dict) and "id" in o for o in data):
            raise StripeUnavailable("Stripe answered a list without data")
        return StripeList(data=data, has_more=bool(body.get("has_more")))

    async def retrieve_customer(self, customer_id: str, *, stripe_account: str) -> dict[str, Any]:
        """`GET /v1/customers/{id}`; a deleted customer comes back as `{"deleted": true}`."""
        return await self.get(f"/v1/customers/{customer_id}", stripe_account=stripe_account)


def _error_of(response: httpx.Response) -> tuple[str, str]:
    """(code, message) of an OAuth error (`{"error": "...", "error_description": "..."}`) or
    an API error (`{"error": {"code"|"type", "message"}}`)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, str):
            return error, str(body.get("error_description") or error)
        if isinstance(error, dict):
            code = error.get("code") or error.get("type") or "stripe_error"
            return str(code), str(error.get("message") or code)
    return "stripe_error", f"Stripe answered {response.status_code}"


def _grant(body: dict[str, Any]) -> TokenGrant:
    try:
        access_token = body["access_token"]
        stripe_user_id = body["stripe_user_id"]
    except KeyError as exc:
        raise StripeUnavailable(f"token response without {exc.args[0]}") from None
    expires_in = body.get("expires_in")
    return TokenGrant(
        access_token=str(access_token),
        refresh_token=body.get("refresh_token"),
        stripe_user_id=str(stripe_user_id),
        livemode=bool(body.get("livemode", False)),
        scope=body.get("scope"),
        expires_in=int(expires_in) if expires_in is not None else None,
    )
