"""The cluster benchmarks' verdicts (bench/cluster.py): what they state about
issue 26's targets.  (The capped run's cgroups are the bench's own business:
a test of them would need a writable cpu controller, which CI may not have,
and the suite skips only through tests/needs.py.)"""

from __future__ import annotations

from bench.cluster import ONE, PARTITIONED, ROUND_ROBIN, SQLITE, targets


def test_targets_state_each_ratio_met_or_missed_at_its_bound() -> None:
    rates = {SQLITE: 500.0, ONE: 300.0, PARTITIONED: 330.0, ROUND_ROBIN: 296.0}
    lines = targets(rates)
    assert lines == [
        "round-robin / partitioned >= 0.9x: **0.897** MISSED",
        "two nodes partitioned / one node >= 1.1x: **1.100** met",
        "two nodes round-robin / one node >= 1.1x: **0.987** MISSED",
        "PostgreSQL one node / SQLite >= 0.6x: **0.600** met",
    ]
