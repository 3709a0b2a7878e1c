"""The cluster benchmarks' verdicts and CPU caps (bench/cluster.py,
bench/cluster_limited.py): what they state about issue 26's targets, and that
a capped run leaves no cgroup behind."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from bench.cluster import ONE, PARTITIONED, ROUND_ROBIN, SQLITE, targets
from bench.cluster_limited import PERIOD_US, cgroups_unavailable, cpu_caps


def test_targets_state_each_ratio_met_or_missed_at_its_bound() -> None:
    rates = {SQLITE: 500.0, ONE: 300.0, PARTITIONED: 330.0, ROUND_ROBIN: 296.0}
    lines = targets(rates)
    assert lines == [
        "round-robin / partitioned >= 0.9x: **0.897** MISSED",
        "two nodes partitioned / one node >= 1.1x: **1.100** met",
        "two nodes round-robin / one node >= 1.1x: **0.987** MISSED",
        "PostgreSQL one node / SQLite >= 0.6x: **0.600** met",
    ]


@pytest.mark.skipif(bool(cgroups_unavailable()), reason=cgroups_unavailable() or "cgroups")
async def test_cpu_caps_cap_a_process_and_are_removed_even_when_the_run_fails() -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "input()", stdin=-1)
    try:
        with pytest.raises(RuntimeError, match="the run failed"), cpu_caps(["x"], 0.5) as caps:
            path = caps["x"].path
            caps["x"].add(proc.pid)
            assert (path / "cpu.cfs_quota_us").read_text().strip() == str(PERIOD_US // 2)
            assert (path / "cgroup.procs").read_text().split() == [str(proc.pid)]
            raise RuntimeError("the run failed")
        # Still running, moved back out of the removed group.
        assert proc.returncode is None
        assert not path.exists()
        assert ":cpu:/\n" in Path(f"/proc/{proc.pid}/cgroup").read_text()
    finally:
        proc.kill()
        await proc.wait()
