"""Stripe webhook signatures: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>...]`."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


class SignatureError(ValueError):
    """The signature header is missing, malformed, stale or matches no secret."""


def compute_signature(secret: str, timestamp: int, payload: bytes) -> str:
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str],
    *,
    now: float,
    tolerance: int = 300,
) -> int:
    """Check `header` against the raw `payload`; return the signed timestamp.

    Valid when ANY `v1` value matches ANY secret (secret rotation). Every comparison is
    constant-time and all pairs are compared, so timing tells nothing about which failed.
    Timestamps more than `tolerance` seconds away from `now`, in either direction, fail.
    """
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("malformed timestamp") from None
        elif key == "v1":
            candidates.append(value)
    if timestamp is None:
        raise SignatureError("no timestamp in signature header")
    if not candidates:
        raise SignatureError("no v1 signature in header")
    # Compared, not subtracted: an int too large for a float must fail, not overflow.
    if not now - tolerance <= timestamp <= now + tolerance:
        raise SignatureError("timestamp outside the tolerance")

    matched = False
    for secret in secrets:
        expected = compute_signature(secret, timestamp, payload).encode()
        for candidate in candidates:
            matched |= hmac.compare_digest(expected, candidate.encode(errors="replace"))
    if not matched:
        raise SignatureError("no signature matches")
    return timestamp


def signature_header(secret: str, timestamp: int, payload: bytes) -> str:
    """A header as Stripe would send it (for fixtures, benchmarks and local tools)."""
    return f"t={timestamp},v1={compute_signature(secret, timestamp, payload)}"
