"""The one JSON error shape of the contract, and handlers that guarantee it everywhere."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import StatementError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = structlog.get_logger(__name__)


class ApiError(Exception):
    """An error answer: `{"error": {"code", "message", "details"}}` with an HTTP status."""

    def __init__(
        self, status: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status)


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    503: "service_unavailable",
}


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    fields = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        fields.append({"field": ".".join(loc), "message": err.get("msg", "invalid")})
    return fields


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, (ValueError, RecursionError)):
        # FastAPI could not decode the JSON body (not UTF-8, nested deeper than the parser
        # goes, an integer of over 4300 digits): for the contract that is a body failing
        # validation like any other.
        fields = [{"field": "body", "message": "not readable JSON (encoding or nesting)"}]
        return error_response(422, "validation_error", "Invalid body", {"fields": fields})
    code = _STATUS_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    response = error_response(exc.status_code, code, message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = _field_errors(exc)
    names = ", ".join(f["field"] for f in fields) or "the request"
    return error_response(422, "validation_error", f"Invalid {names}", {"fields": fields})


def route_template(request: Request) -> str:
    """The matched route's template (`/optin/{token}`), never the concrete path: paths can
    carry opt-in tokens and email addresses, which must not reach the logs."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


# SQLSTATEs of text Postgres cannot hold: NUL (22021), an escape it cannot store (22P05).
_UNSTORABLE_TEXT = {"22021", "22P05"}


def _unstorable_text(exc: BaseException) -> bool:
    """JSON can carry NUL and unpaired surrogates; Postgres text cannot hold them."""
    for error in (exc, exc.__cause__, getattr(exc, "orig", None)):
        if isinstance(error, UnicodeEncodeError):
            return True
        driver = getattr(error, "driver_exception", None)
        if getattr(driver, "sqlstate", None) in _UNSTORABLE_TEXT:
            return True
    return False


async def _statement_error(request: Request, exc: Exception) -> JSONResponse:
    if _unstorable_text(exc):
        # Bad input the validators let through: refused like any invalid field.
        message = "Text must not contain NUL characters or unpaired surrogates."
        fields = [{"field": "body", "message": message}]
        return error_response(422, "validation_error", message, {"fields": fields})
    return await _unexpected(request, exc)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Operators get the trace in the log; callers never do.
    log.exception("unhandled_error", route=route_template(request), method=request.method)
    return error_response(500, "internal_error", "Something went wrong on our side.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StatementError, _statement_error)
    app.add_exception_handler(Exception, _unexpected)
