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
    """Stripe could not be reached or failed on its side; the request may be retried."""


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
            raise StripeUnavailable(f"Stripe answered {response.status_code}")
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
