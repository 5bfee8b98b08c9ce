"""Bearer-token checks for the platform and ops APIs, in constant time."""

from __future__ import annotations

import hmac

from fastapi import Request

from stripesync.config import Settings
from stripesync.kit.errors import ApiError


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(401, "unauthorized", "Missing bearer token.")
    return token.strip()


def _check(request: Request, setting: str) -> None:
    settings: Settings = request.app.state.settings
    expected = getattr(settings, setting)
    token = _bearer(request)
    if expected is None or not hmac.compare_digest(
        token.encode(), expected.get_secret_value().encode()
    ):
        raise ApiError(401, "unauthorized", "Wrong bearer token.")


async def require_platform_token(request: Request) -> None:
    """Dependency for `/v1/accounts/...`."""
    _check(request, "platform_api_token")


async def require_ops_token(request: Request) -> None:
    """Dependency for `/v1/jobs/...` and `/v1/ops/...`."""
    _check(request, "ops_api_token")
