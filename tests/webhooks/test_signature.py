"""Our verifier against the official `stripe` package's, on the same headers."""

from __future__ import annotations

import time

import pytest
import stripe
import time_machine
from hypothesis import given, settings
from hypothesis import strategies as st

from stripesync.webhooks.signature import SignatureError, verify_signature

SECRET = "whsec_primary"
OTHER = "whsec_other"
PAYLOAD = b'{"id": "evt_1", "object": "event"}'


def ours(payload: bytes, header: str, secrets: list[str], now: float) -> bool:
    try:
        verify_signature(payload, header, secrets, now=now, tolerance=300)
        return True
    except SignatureError:
        return False


def theirs(payload: bytes, header: str, secret: str) -> bool:
    try:
        stripe.WebhookSignature.verify_header(payload, header, secret, tolerance=300)
        return True
    except stripe.SignatureVerificationError:
        return False


def stripe_header(payload: bytes, secret: str, ts: int) -> str:
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret, timestamp=ts)


def test_valid_header_is_accepted_by_both() -> None:
    now = int(time.time())
    header = stripe_header(PAYLOAD, SECRET, now)
    assert ours(PAYLOAD, header, [SECRET], now) is True
    assert theirs(PAYLOAD, header, SECRET) is True


def test_tampered_body_is_rejected_by_both() -> None:
    now = int(time.time())
    header = stripe_header(PAYLOAD, SECRET, now)
    tampered = PAYLOAD.replace(b"evt_1", b"evt_2")
    assert ours(tampered, header, [SECRET], now) is False
    assert theirs(tampered, header, SECRET) is False


def test_stale_timestamp_is_rejected_by_both() -> None:
    now = int(time.time())
    header = stripe_header(PAYLOAD, SECRET, now - 301)
    assert ours(PAYLOAD, header, [SECRET], now) is False
    assert theirs(PAYLOAD, header, SECRET) is False


def test_far_future_timestamp_is_rejected_by_us_though_stripe_accepts_it() -> None:
    now = int(time.time())
    header = stripe_header(PAYLOAD, SECRET, now + 301)
    assert theirs(PAYLOAD, header, SECRET) is True  # the SDK checks old timestamps only
    assert ours(PAYLOAD, header, [SECRET], now) is False


def test_timestamps_at_the_tolerance_edge_are_accepted() -> None:
    now = int(time.time())
    for ts in (now - 300, now + 300):
        assert ours(PAYLOAD, stripe_header(PAYLOAD, SECRET, ts), [SECRET], now) is True


def test_any_v1_matching_any_secret_is_accepted() -> None:
    now = int(time.time())
    good = stripe_header(PAYLOAD, OTHER, now).split("v1=")[1]
    header = f"t={now},v1={'0' * 64},v0=deadbeef,v1={good}"
    assert theirs(PAYLOAD, header, OTHER) is True
    assert ours(PAYLOAD, header, [SECRET, OTHER], now) is True
    assert ours(PAYLOAD, header, [SECRET], now) is False


@pytest.mark.parametrize(
    "header",
    ["", "garbage", "t=abc,v1=00", "v1=00", "t=1700000000", f"t={int(time.time())},v0=00"],
)
def test_malformed_headers_are_rejected(header: str) -> None:
    assert ours(PAYLOAD, header, [SECRET], time.time()) is False


@settings(max_examples=200, deadline=None)
@given(
    payload=st.binary(max_size=200),
    skew=st.integers(min_value=-1000, max_value=1000),
    secret_used=st.sampled_from([SECRET, OTHER, "whsec_unknown"]),
    extra_sigs=st.lists(st.text(alphabet="0123456789abcdef", min_size=64, max_size=64), max_size=3),
)
def test_verifier_agrees_with_stripe_on_random_headers(
    payload: bytes, skew: int, secret_used: str, extra_sigs: list[str]
) -> None:
    now = int(time.time())
    text_payload = payload.decode("latin-1").encode()  # valid UTF-8 for the SDK
    header = stripe_header(text_payload, secret_used, now + skew)
    header += "".join(f",v1={sig}" for sig in extra_sigs)
    # The SDK reads the clock itself: freeze it at `now` so both judge the same instant.
    with time_machine.travel(now, tick=False):
        sdk = any(theirs(text_payload, header, s) for s in (SECRET, OTHER))
    # The SDK accepts any future timestamp; we refuse those beyond the tolerance too.
    assert ours(text_payload, header, [SECRET, OTHER], now) is (sdk and skew <= 300)
