"""Pydantic models shared by every feature's HTTP contract."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: dict[str, Any]


class ErrorBody(BaseModel):
    error: ErrorDetail


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Every 4xx/5xx the contract names, for `responses=` on routes (OpenAPI documentation).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _err("Bad request"),
    401: _err("Missing or wrong bearer token"),
    404: _err("Unknown resource"),
    409: _err("State conflict"),
    410: _err("Gone"),
    413: _err("Body too large"),
    422: _err("Validation failed; details name the fields"),
    503: _err("A dependency is down and nothing was stored"),
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}
