"""When an import is polled: the next poll lands where its progress points (no clocks)."""

from __future__ import annotations

import pytest

from stripesync.sync.bulk import MAX_POLL_INTERVAL_SECONDS, next_poll_in

INTERVAL = 0.25


def test_first_poll_points_just_after_the_end_its_progress_since_acceptance_gives() -> None:
    # Half done 2 s after its acceptance reached us: about 2 s to go (and a margin).
    assert next_poll_in(2.0, 50, None, INTERVAL) == pytest.approx(2.0 + INTERVAL / 2)


def test_later_polls_go_by_the_pace_between_polls() -> None:
    # The platform started 0.5 s before its answer reached us and takes 4 s: at 1.5 s and
    # 2.5 s (our clock) it is 50% and 75% done, 1 s from the end. From the acceptance
    # alone, 2.5 s for 75% leaves 0.83 s: a poll before the end, and one more after it.
    assert next_poll_in(2.5, 75, (1.5, 50), INTERVAL) == pytest.approx(1.0 + INTERVAL / 2)
    assert next_poll_in(2.5, 75, None, INTERVAL) < 1.0


def test_without_progress_polls_back_off_within_bounds() -> None:
    assert next_poll_in(0.1, 0, None, INTERVAL) == INTERVAL
    assert next_poll_in(3.0, 0, (1.0, 0), INTERVAL) == 3.0
    assert next_poll_in(100.0, 0, None, INTERVAL) == MAX_POLL_INTERVAL_SECONDS
    # No progress since the last poll: the pace since acceptance instead.
    assert next_poll_in(2.0, 40, (1.0, 40), INTERVAL) == pytest.approx(3.0 + INTERVAL / 2)


def test_polls_are_at_least_an_interval_apart() -> None:
    assert next_poll_in(9.9, 99, (9.0, 90), INTERVAL) == INTERVAL
