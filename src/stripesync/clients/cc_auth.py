"""Constant Contact's OAuth token endpoint: refreshing an account's access token.

`POST {STRIPESYNC_CC_TOKEN_URL}` with HTTP Basic client auth (client id:secret) and
`grant_type=refresh_token`. Access tokens live 24 h; refresh tokens may rotate (single use),
so callers must store the new pair before using it (accounts/tokens.py does).
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from stripesync.config import Settings


class CcAuthError(Exception):
    """The token endpoint refused the refresh (`invalid_grant`...): the account must
    re-authorize on the platform; retrying will not help."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code


class CcAuthUnavailable(Exception):
    """The token endpoint could not be reached or failed (5xx, 429): retry later."""


@dataclass(frozen=True)
class CcTokens:
    """A refreshed pair. Secrets: never log an instance."""

    access_token: str
    refresh_token: str | None  # None: the old refresh token stays valid
    expires_in: int | None

    def __repr__(self) -> str:
        return f"CcTokens(expires_in={self.expires_in})"


async def refresh_cc_token(
    http: httpx.AsyncClient, settings: Settings, refresh_token: str
) -> CcTokens:
    """Exchange a refresh token for a new pair at the Constant Contact token URL."""
    settings.require("cc_client_id", "cc_client_secret")
    assert settings.cc_client_id is not None and settings.cc_client_secret is not None
    try:
        response = await http.post(
            settings.cc_token_url,
            data={"grant_type": "refresh_token", "refresh_token": refresh_token},
            auth=httpx.BasicAuth(
                settings.cc_client_id, settings.cc_client_secret.get_secret_value()
            ),
            headers={"Accept": "application/json"},
        )
    except httpx.HTTPError as exc:
        raise CcAuthUnavailable(f"{type(exc).__name__} calling the token endpoint") from exc
    if response.status_code == 429 or response.status_code >= 500:
        raise CcAuthUnavailable(f"token endpoint answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not response.is_success or not isinstance(body, dict) or "access_token" not in body:
        code = body.get("error") if isinstance(body, dict) else None
        raise CcAuthError(response.status_code, str(code or "token_refresh_failed"))
    expires_in = body.get("expires_in")
    return CcTokens(
        access_token=str(body["access_token"]),
        refresh_token=body.get("refresh_token"),
        expires_in=int(expires_in) if expires_in is not None else None,
    )
