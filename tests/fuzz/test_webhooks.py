"""Random and mutated webhook deliveries against the app served by uvicorn: whatever the
body and headers, never a 5xx, and nothing is stored without a valid signature over
exactly the bytes received (rows counted through the ops API after every delivery)."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stripesync.webhooks.signature import signature_header
from tests.conftest import OLD_WEBHOOK_SECRET, WEBHOOK_SECRET, ops_headers
from tests.fuzz.conftest import LiveServer
from tests.support import stripe_event

EXAMPLES = int(os.environ.get("STRIPESYNC_FUZZ_EXAMPLES", "0")) or 300
LIMIT = 512 * 1024

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
odd_text = st.sampled_from(
    [
        "\\u0000",
        "\\ud800",
        "\\udfff\\ud800",
        "\u202e\u0627\u0644",
        "\U0001f4a9" * 3,
        "\ufeff",
        "e\u0301",
        "\\",
        '\\"',
        "\x7f",
    ]
)
huge_numbers = st.sampled_from(
    [
        "1" + "0" * 400,
        "-" + "9" * 4000,
        "9" * 5000,
        "1e400",
        "-1e400",
        "1.0e-400",
        "18446744073709551616",
        "-0",
        "0.0",
        "1E5",
    ]
)


def base_event(draw: Any) -> dict[str, Any]:
    event = stripe_event(
        draw(st.sampled_from(["customer.created", "charge.succeeded", "ping", "x" * 300])),
        {
            "id": "cus_" + draw(st.text("abcdef0123456789", min_size=1, max_size=12)),
            "object": "customer",
            "email": draw(
                st.sampled_from([None, "a@b.example", "", "not-an-email", "A@B.EXAMPLE"])
            ),
            "metadata": draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)),
        },
        account=draw(st.sampled_from(["acct_fuzz", None, "", "acct_" + "x" * 300])),
        livemode=draw(st.booleans()),
    )
    if draw(st.booleans()):
        key = draw(st.sampled_from(sorted(event)))
        event[key] = draw(json_values)  # a wrong type (or a right one) anywhere on top
    return event


@st.composite
def mutated_bodies(draw: Any) -> bytes:
    body = json.dumps(base_event(draw)).encode()
    kind = draw(
        st.sampled_from(
            [
                "none",
                "flip",
                "truncate",
                "huge_number",
                "duplicate_key",
                "unicode",
                "deep",
                "random",
                "oversized",
                "not_object",
            ]
        )
    )
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(body) - 1))
            body = body[:i] + bytes([body[i] ^ draw(st.integers(1, 255))]) + body[i + 1 :]
    elif kind == "truncate":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif kind == "huge_number":
        field = draw(st.sampled_from(["created", "livemode", "pending_webhooks", "id"]))
        number = draw(huge_numbers).encode()
        start = body.index(f'"{field}": '.encode()) + len(field) + 4
        end = min(i for i in (body.find(b",", start), body.find(b"}", start)) if i != -1)
        body = body[:start] + number + body[end:]
    elif kind == "duplicate_key":
        key = draw(st.sampled_from(["id", "object", "type", "created", "data", "account"]))
        value = json.dumps(draw(json_values)).encode()
        body = body[:-1] + b', "' + key.encode() + b'": ' + value + b"}"
    elif kind == "unicode":
        text = draw(odd_text).encode("utf-8", "surrogatepass")
        at = body.find(b'"type": "')  # absent when `type` was given another JSON type
        if at == -1:
            body = body[:-1] + b', "note": "' + text + b'"}'
        else:
            i = at + len(b'"type": "')
            body = body[:i] + text + body[i:]
    elif kind == "deep":
        depth = draw(st.sampled_from([50, 999, 1001, 10_000, 100_000]))
        nested = b"[" * depth + b"]" * depth
        body = body.replace(b'"metadata": {', b'"deep": ' + nested + b', "metadata": {', 1)
    elif kind == "random":
        body = draw(st.binary(max_size=300))
    elif kind == "oversized":
        pad = LIMIT - len(body) + draw(st.integers(-40, 40))
        body = body[:-1] + b', "pad": "' + b"x" * max(pad, 0) + b'"}'
    elif kind == "not_object":
        body = json.dumps(draw(json_values)).encode()
    return body


@st.composite
def deliveries(draw: Any) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, whether the signature is valid for exactly this body)."""
    original = json.dumps(base_event(draw)).encode()
    body = draw(mutated_bodies()) if draw(st.booleans()) else original
    now = int(time.time())
    kind = draw(
        st.sampled_from(
            [
                "valid",
                "valid_rotated_secret",
                "other_body",
                "missing",
                "garbage",
                "wrong_secret",
                "stale",
                "future",
                "huge_timestamp",
                "v0_only",
                "many_v1",
                "long_header",
            ]
        )
    )
    valid = False
    if kind == "valid":
        header, valid = signature_header(WEBHOOK_SECRET, now, body), True
    elif kind == "valid_rotated_secret":
        header, valid = signature_header(OLD_WEBHOOK_SECRET, now, body), True
    elif kind == "other_body":
        header = signature_header(WEBHOOK_SECRET, now, original)
        valid = body == original
    elif kind == "missing":
        header = None
    elif kind == "garbage":
        header = draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=200))
    elif kind == "wrong_secret":
        header = signature_header("whsec_not_ours", now, body)
    elif kind == "stale":
        header = signature_header(WEBHOOK_SECRET, now - draw(st.integers(360, 10**9)), body)
    elif kind == "future":
        header = signature_header(WEBHOOK_SECRET, now + draw(st.integers(360, 10**9)), body)
    elif kind == "huge_timestamp":
        ts = draw(st.sampled_from(["1" + "0" * 400, "-" + "9" * 400, "9" * 5000, "1e9", "0x10"]))
        sig = signature_header(WEBHOOK_SECRET, now, body).split(",", 1)[1]
        header = f"t={ts},{sig}"
    elif kind == "v0_only":
        header = signature_header(WEBHOOK_SECRET, now, body).replace("v1=", "v0=")
    elif kind == "many_v1":
        good = signature_header(WEBHOOK_SECRET, now, body).split(",", 1)[1]
        junk = ",".join(f"v1={'0' * 64}" for _ in range(draw(st.integers(1, 200))))
        valid = draw(st.booleans())
        header = f"t={now},{junk}" + (f",{good}" if valid else "")
    else:  # long_header
        header = signature_header(WEBHOOK_SECRET, now, body) + ",x=" + "y" * 6000
        valid = True  # unknown keys are ignored, as Stripe's own libraries do
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if header is not None:
        headers["Stripe-Signature"] = header
    return body, headers, valid


def stored_events(base_url: str, session: requests.Session) -> int:
    response = session.get(f"{base_url}/v1/ops/events", params={"limit": 500}, headers=ops_headers)
    assert response.status_code == 200, response.text
    events = response.json()["events"]
    assert len(events) < 500
    return len(events)


@pytest.mark.usefixtures("engine")  # tables are emptied after the test
def test_no_delivery_gets_a_5xx_and_only_validly_signed_ones_are_stored(
    live_server: LiveServer,
) -> None:
    session = requests.Session()
    url = f"{live_server.url}/webhooks/stripe"
    seen: dict[str, int] = {}

    @given(delivery=deliveries())
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def deliver(delivery: tuple[bytes, dict[str, str], bool]) -> None:
        body, headers, valid = delivery
        before = stored_events(live_server.url, session)
        response = session.post(url, data=body, headers=headers, timeout=30)
        assert response.status_code < 500, (response.status_code, response.text[:300])
        assert response.headers["content-type"].startswith("application/json")
        after = stored_events(live_server.url, session)
        outcome = f"{response.status_code} {'signed' if valid else 'unsigned'}"
        seen[outcome] = seen.get(outcome, 0) + 1
        if not valid:
            assert response.status_code in (400, 413), response.text
            assert after == before, "stored without a valid signature"
            return
        assert response.status_code in (200, 400, 413), response.text
        if response.status_code == 200:
            assert after == before + (0 if response.json()["duplicate"] else 1)
        else:
            assert after == before

    deliver()
    # The run reached every branch: signed events stored, refused ones of both kinds.
    assert seen.get("200 signed", 0) >= 10, seen
    assert seen.get("400 unsigned", 0) >= 10, seen
    assert seen.get("400 signed", 0) >= 5, seen
    assert seen.get("413 signed", 0) + seen.get("413 unsigned", 0) >= 1, seen


@pytest.mark.usefixtures("engine")
def test_timestamp_too_large_for_a_float_is_a_400_not_a_500(live_server: LiveServer) -> None:
    # Found by the fuzzer above: `t=1000...0` (401 digits) overflowed the tolerance check.
    body = json.dumps(stripe_event()).encode()
    sig = signature_header(WEBHOOK_SECRET, int(time.time()), body).split(",", 1)[1]
    for ts in ("1" + "0" * 400, "-" + "9" * 400):
        response = requests.post(
            f"{live_server.url}/webhooks/stripe",
            data=body,
            headers={"Stripe-Signature": f"t={ts},{sig}", "Content-Type": "application/json"},
            timeout=30,
        )
        assert response.status_code == 400, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
