"""When an import is polled: the next poll lands where its progress points (no clocks)."""

from __future__ import annotations

import pytest

from stripesync.sync.bulk import MAX_POLL_INTERVAL_SECONDS, next_poll_in

INTERVAL = 0.25


def test_first_poll_points_at_the_end_its_progress_since_sending_gives() -> None:
    # Half done 2 s after we sent it: about 2 s to go (and a little after).
    assert next_poll_in(2.0, 50, None, INTERVAL) == pytest.approx(2.0 + INTERVAL / 4)


def test_later_polls_go_by_the_pace_between_polls() -> None:
    # The platform started 0.5 s after we sent the import (the upload) and takes 4 s: at
    # 1.5 s and 2.5 s after sending it is 25% and 50% done, 2 s from the end. The pace
    # since sending (50% in 2.5 s) would put the end 0.5 s too late.
    assert next_poll_in(2.5, 50, (1.5, 25), INTERVAL) == pytest.approx(2.0 + INTERVAL / 4)
    assert next_poll_in(2.5, 50, None, INTERVAL) > 2.0 + INTERVAL / 4


def test_without_progress_polls_back_off_within_bounds() -> None:
    assert next_poll_in(0.1, 0, None, INTERVAL) == INTERVAL
    assert next_poll_in(3.0, 0, (1.0, 0), INTERVAL) == 3.0
    assert next_poll_in(100.0, 0, None, INTERVAL) == MAX_POLL_INTERVAL_SECONDS
    # No progress since the last poll: the pace since acceptance instead.
    assert next_poll_in(2.0, 40, (1.0, 40), INTERVAL) == pytest.approx(3.0 + INTERVAL / 4)


def test_polls_are_at_least_an_interval_apart() -> None:
    assert next_poll_in(9.9, 99, (9.0, 90), INTERVAL) == INTERVAL
