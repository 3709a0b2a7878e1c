"""``iso`` (the fast one, on every task JSON and event) says what ``datetime`` says."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from operator_server.wire.times import iso, iso_slow

EDGES = [
    0.0,
    0.0005,
    0.0009995,
    0.9999995,  # rounds up into the next second
    1.9999994,
    1_700_000_000.0,
    1_700_000_000.9995,
    1_700_000_000.999_999_9,
    253_402_300_799.0,  # the last second of year 9999
    -1.5,  # before 1970: the slow path
]


def test_iso_agrees_with_datetime_at_the_edges_of_rounding() -> None:
    for ts in EDGES:
        assert iso(ts) == iso_slow(ts), ts
    assert iso(None) is None


@settings(max_examples=2000, deadline=None)
@given(st.floats(min_value=-1e10, max_value=253_402_300_799.0, allow_nan=False))
def test_iso_agrees_with_datetime_for_any_timestamp(ts: float) -> None:
    assert iso(ts) == iso_slow(ts)


def test_iso_agrees_with_datetime_for_a_run_within_one_second_and_across_it() -> None:
    start = float(int(time.time()))
    for i in range(3000):
        ts = start + i * 0.000_731
        assert iso(ts) == iso_slow(ts), ts


def test_iso_answers_a_timestamp_it_has_seen_the_same_and_its_memory_stays_bounded() -> None:
    from operator_server.wire import times

    base = 1_800_000_000.0
    first = iso(base + 0.1234)
    assert iso(base + 0.1234) == first == iso_slow(base + 0.1234)
    for i in range(times._RECENT_MAX * 2):
        ts = base + i / 1000
        assert iso(ts) == iso_slow(ts)
    assert len(times._recent) <= times._RECENT_MAX
