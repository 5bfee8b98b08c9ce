"""Opaque keyset cursors: base64 of a small JSON list of the last row's sort keys."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from stripesync.kit.errors import ApiError


def encode_cursor(*keys: Any) -> str:
    raw = json.dumps(list(keys), default=str, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        keys = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        keys = None
    if not isinstance(keys, list) or len(keys) != arity:
        raise ApiError(
            422,
            "invalid_cursor",
            "The cursor is not one this API gave out.",
            {"fields": [{"field": "query.cursor", "message": "invalid cursor"}]},
        )
    return keys
