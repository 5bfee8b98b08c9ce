"""The window plan: splits keep every object in exactly one window; estimates extrapolate."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

from stripesync.imports.windows import (
    HISTORY_START,
    Window,
    estimate,
    initial_plan,
    next_to_claim,
    split_point,
)


def test_plan_covers_all_history_and_optin_customers_only_six_months() -> None:
    started = datetime(2026, 11, 26, tzinfo=UTC)
    end = int(started.timestamp()) + 1
    for mode, customers_start in (("direct", HISTORY_START), ("optin", end - 1 - 183 * 86_400)):
        plan = initial_plan(mode, started, 4)
        for resource in ("customers", "charges", "checkout_sessions", "subscriptions"):
            spans = sorted((g, lt) for r, g, lt in plan if r == resource)
            start = customers_start if resource == "customers" else HISTORY_START
            assert spans[0][0] == start and spans[-1][1] == end
            assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))


def test_split_cuts_below_what_was_read_and_leaves_no_gap() -> None:
    # 400 objects in the last 200 s: about 1,600 left in the 800 s below.
    read = Window(
        id=1, resource="charges", gte=0, lt=1000, claimed=True, fetch_oldest=800, fetched=400
    )
    idle = Window(
        id=2, resource="charges", gte=1000, lt=1100, claimed=True, fetch_oldest=1090, fetched=5
    )
    assert next_to_claim([read, idle]) is None
    chosen = split_point([read, idle])
    assert chosen == (read, 400)
    sparse = Window(
        id=4, resource="charges", gte=0, lt=1000, claimed=True, fetch_oldest=800, fetched=20
    )
    assert split_point([sparse]) is None  # ~80 left: not worth a window of its own
    done = Window(id=3, resource="charges", gte=0, lt=100, claimed=True, fetch_done=True)
    assert split_point([done]) is None


def test_estimate_extrapolates_from_what_was_read() -> None:
    # Half of a window read with 50 objects: about 100 in all; a finished one counts exactly.
    half = Window(id=1, resource="charges", gte=0, lt=1000, objects=50, oldest_created=500)
    whole = Window(id=2, resource="charges", gte=1000, lt=2000, objects=30, done=True)
    fresh = Window(id=3, resource="charges", gte=2000, lt=3000)
    done, total = estimate([half, whole, fresh])
    assert done == 80
    assert 150 <= total <= 260
