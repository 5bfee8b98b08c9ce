"""A cap on request bodies for every route: 413 with the contract's error shape."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stripesync.kit.errors import error_response


class BodyTooLargeError(HTTPException):
    """Raised while a body is read; an HTTPException so FastAPI's body parsing lets it
    through to the error handlers (anything else it would turn into a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"Body is larger than {limit} bytes.")


class BodySizeLimit:
    """ASGI middleware: a body declared (Content-Length) or streamed past `max_bytes` is
    refused with 413 before the app holds more than that many bytes of it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                response = error_response(
                    413, "payload_too_large", f"Body is larger than {self.max_bytes} bytes."
                )
                await response(scope, receive, send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)
