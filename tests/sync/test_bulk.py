"""When an import is polled: the poll that should see the end goes just after the end that
the pace between two polls points to; one poll alone only places a second (no clocks)."""

from __future__ import annotations

import pytest

from stripesync.sync.bulk import MAX_POLL_INTERVAL_SECONDS, next_poll_in

INTERVAL = 0.25


def test_after_two_polls_the_next_lands_just_after_the_end_their_pace_gives() -> None:
    # The platform started 0.5 s before its answer reached us and takes 4 s: at 1.5 s and
    # 2.5 s (our clock) it is 50% and 75% done, 1 s from the end.
    assert next_poll_in(2.5, 75, (1.5, 50), INTERVAL) == pytest.approx(1.0 + INTERVAL / 4)


def test_one_poll_far_from_the_end_places_a_second_halfway_not_at_the_end() -> None:
    # Same import, first polled at 1.5 s: the pace since acceptance (50% in 1.5 s) points
    # to 1.5 s more, but the end is 2.5 s away; aiming there would poll early and waste
    # the poll. Half of it lands well before either end, and the two polls give the pace.
    wait = next_poll_in(1.5, 50, None, INTERVAL)
    assert wait == pytest.approx(0.75, abs=0.05)
    assert 1.5 + wait < 4.0 - 0.5  # before the end, with room for the last poll after it


def test_one_early_poll_at_a_rounded_down_percent_places_the_second_before_the_end() -> None:
    # A 2 s import, polled 0.03 s into it at the platform (1.5% done, rounded down to 1%),
    # the answer back 0.05 s after the acceptance reached us. That pace points to 5 s
    # more; the second poll must still come before the end, to learn the true pace.
    wait = next_poll_in(0.05, 1, None, INTERVAL)
    assert 0.05 + wait < 2.0 - 0.05


def test_one_poll_near_the_end_aims_just_after_it() -> None:
    # 90% after 3.6 s: 0.4 s left by that pace, too little to sample again first.
    assert next_poll_in(3.6, 90, None, INTERVAL) == pytest.approx(0.4 + INTERVAL / 2)


def test_without_progress_polls_back_off_within_bounds() -> None:
    assert next_poll_in(0.1, 0, None, INTERVAL) == INTERVAL
    assert next_poll_in(3.0, 0, (1.0, 0), INTERVAL) == 3.0
    assert next_poll_in(100.0, 0, None, INTERVAL) == MAX_POLL_INTERVAL_SECONDS
    # No progress since the last poll: one sample's worth, halfway to the earliest end it
    # allows (59% left at 41% per 2 s).
    assert next_poll_in(2.0, 40, (1.0, 40), INTERVAL) == pytest.approx(59 / 41)


def test_polls_are_at_least_an_interval_apart() -> None:
    assert next_poll_in(9.9, 99, (9.0, 90), INTERVAL) == INTERVAL
    assert next_poll_in(9.9, 99, None, INTERVAL) == INTERVAL
