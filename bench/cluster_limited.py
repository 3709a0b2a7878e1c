"""Cluster mode with each daemon's CPU capped: 1 node vs 2 nodes partitioned vs
2 nodes round-robin, as if every node had a machine of its own.

On the 2-core development machine the daemons, PostgreSQL and the load
generator share the cores, so bench/cluster.py cannot show what a second node
adds on a machine of its own.  Here every daemon runs in its own cgroup (v1
``cpu`` controller, CFS quota) capped at ``SHARE`` of one core — the same cap
for the one-node and the two-node configurations — so that a daemon, not
PostgreSQL or the load generator, is what limits the rate, as it would be with
one machine per node.  The output says whether that held: each node's CPU use
as a fraction of its cap (near 100%: the daemon was the bound) and the whole
machine's (well below 100%: the shared cores were not).

docs/cluster.md ("Throughput") holds the model this checks: with every node
bound by its own CPU, ``X(N) = N * SHARE / C_d`` (``C_d``: daemon CPU per task
over all nodes, one node's when partitioned, more when tasks are created on the
wrong node), until the writer or PostgreSQL binds.

Writing cgroups needs root and a writable cpu controller; where that is not so,
the output says why and no row is measured (no number stands in for it).
Every cgroup made here is removed when the run ends, failed or not.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.cluster import PARTITIONED, PEERS, ROUND_ROBIN, Config, Load, database, load, pg_node
from bench.common import WINDOW, Daemon, median, progress, record, table, verdict
from operator_server.localcluster import throwaway_postgres

CPU_CONTROLLER = Path("/sys/fs/cgroup/cpu")
# A quarter of a core per node: two capped nodes (0.5 core), PostgreSQL
# (~0.3 core at their rate) and the peers (~0.5) fit in the 2 shared cores
# with room to spare, so only the caps bind.
SHARE = 0.25
# A short CFS period: the cap is enforced in slices of 20 ms, not 100 ms, so a
# throttled daemon stalls for at most ~15 ms at a time and its batches stay the
# shape they have on a machine of its own.
PERIOD_US = 20_000
TOTAL = 1500
WARMUP = 150
ROUNDS = 3
ONE = "PostgreSQL, 1 node"


class CgroupsUnavailable(Exception):
    """The cpu controller cannot be written here; the message says why."""


def cgroups_unavailable() -> str:
    """Why this run cannot cap a process's CPU, or "" when it can."""
    if not (CPU_CONTROLLER / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_CONTROLLER}"
    if not os.access(CPU_CONTROLLER, os.W_OK):
        return f"{CPU_CONTROLLER} is not writable (not root?)"
    return ""


@dataclass
class CpuCap:
    """One cgroup capping its processes at ``share`` of a core."""

    path: Path

    def add(self, pid: int) -> None:
        (self.path / "cgroup.procs").write_text(f"{pid}\n")

    def throttled(self) -> int:
        """Periods in which the group used up its quota, so far."""
        for line in (self.path / "cpu.stat").read_text().splitlines():
            if line.startswith("nr_throttled "):
                return int(line.split()[1])
        return 0


@contextmanager
def cpu_caps(names: list[str], share: float) -> Iterator[dict[str, CpuCap]]:
    """A cgroup per name, each capped at ``share`` of a core; all removed on the
    way out (their processes moved back to the root group first), even when the
    body fails."""
    why = cgroups_unavailable()
    if why:
        raise CgroupsUnavailable(why)
    made: list[Path] = []
    try:
        caps = {}
        for name in names:
            path = CPU_CONTROLLER / f"operator-server-bench-{os.getpid()}-{name}"
            try:
                path.mkdir()
            except OSError as exc:
                raise CgroupsUnavailable(f"cannot make {path}: {exc}") from exc
            made.append(path)
            (path / "cpu.cfs_period_us").write_text(f"{PERIOD_US}\n")
            (path / "cpu.cfs_quota_us").write_text(f"{round(share * PERIOD_US)}\n")
            caps[name] = CpuCap(path)
        yield caps
    finally:
        for path in made:
            # A group with processes in it cannot be removed; its daemons may
            # still run when the body failed.
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):  # exited meanwhile
                    (CPU_CONTROLLER / "cgroup.procs").write_text(f"{pid}\n")
            path.rmdir()


@dataclass
class Capped:
    load: Load
    node_busy: list[float]  # each node's CPU use over the load, as a fraction of its cap
    throttled: int  # periods in which some node hit its cap


async def capped_load(config: Config, caps: list[CpuCap], total: int) -> Capped:
    throttled0 = sum(c.throttled() for c in caps)
    cpu0 = [n.cpu_s() for n in config.nodes]
    result = await load(config, total)
    cpu1 = [n.cpu_s() for n in config.nodes]
    return Capped(
        result,
        [(b - a) / result.seconds / SHARE for a, b in zip(cpu0, cpu1, strict=True)],
        sum(c.throttled() for c in caps) - throttled0,
    )


def predicted_ratio(nodes: int, one_node_cpu_ms: float, cpu_ms: float) -> float:
    """The model's X(N) / X(1) when every node is bound by its own cap:
    (N * SHARE / C_d(N)) / (SHARE / C_d(1))."""
    return nodes * one_node_cpu_ms / cpu_ms


async def run() -> dict[str, float]:
    why = cgroups_unavailable()
    title = (
        f"cluster, each daemon capped at {SHARE:g} of a core (cgroup cpu quota): tasks/s "
        f"(median of {ROUNDS} interleaved rounds, {TOTAL} tasks, {WINDOW} in flight "
        f"from {PEERS} peers)"
    )
    if why:
        record(title, f"not measured: {why}. No row is recorded.")
        return {}
    with (
        tempfile.TemporaryDirectory(prefix="bench-cluster-limited-") as tmp,
        throwaway_postgres(durable=True) as pg,
    ):
        one = [pg_node(await database(pg, "one"), tmp, "one-a")]
        two = [
            pg_node(await database(pg, "two"), tmp, "two-a"),
            pg_node(pg.url("two"), tmp, "two-b"),
        ]
        configs = {
            ONE: Config(one, pg),
            PARTITIONED: Config(two, pg),
            ROUND_ROBIN: Config(two, pg, cross=True),
        }
        results: dict[str, list[Capped]] = {name: [] for name in configs}
        started: list[Daemon] = []
        try:
            with cpu_caps(["one-a", "two-a", "two-b"], SHARE) as caps:
                for node, name in ((one[0], "one-a"), (two[0], "two-a"), (two[1], "two-b")):
                    await node.start()
                    started.append(node)
                    assert node.proc is not None
                    caps[name].add(node.proc.pid)
                groups = {
                    ONE: [caps["one-a"]],
                    PARTITIONED: [caps["two-a"], caps["two-b"]],
                    ROUND_ROBIN: [caps["two-a"], caps["two-b"]],
                }
                progress(f"cluster-limited: warm-up, {WARMUP} tasks each")
                for config in configs.values():
                    await load(config, WARMUP)
                for r in range(ROUNDS):
                    progress(
                        f"cluster-limited round {r + 1}/{ROUNDS}: {TOTAL} tasks, {WINDOW} in flight"
                    )
                    for name, config in configs.items():
                        results[name].append(await capped_load(config, groups[name], TOTAL))
        except CgroupsUnavailable as exc:
            record(title, f"not measured: {exc}. No row is recorded.")
            return {}
        finally:
            for node in started:
                await node.stop()

    rates = {name: median([x.load.rate for x in runs]) for name, runs in results.items()}
    cpu = {name: median([x.load.daemon_cpu_ms for x in runs]) for name, runs in results.items()}
    rows = [
        [
            name,
            f"{rates[name]:,.0f}",
            f"{median([x.load.p50_ms for x in runs]):.0f}",
            f"{cpu[name]:.2f}",
            f"{median([x.load.postgres_cpu_ms for x in runs]):.2f}",
            " / ".join(
                f"{median([x.node_busy[i] for x in runs]):.0%}"
                for i in range(len(configs[name].nodes))
            ),
            f"{median([float(x.throttled) for x in runs]):,.0f}",
            f"{median([x.load.machine_busy for x in runs]):.0%}",
            f"{rates[name] / rates[ONE]:.2f}",
            f"{predicted_ratio(len(configs[name].nodes), cpu[ONE], cpu[name]):.2f}",
        ]
        for name, runs in results.items()
    ]
    two_each = min(rates[PARTITIONED], rates[ROUND_ROBIN]) / rates[ONE]
    rr = rates[ROUND_ROBIN] / rates[PARTITIONED]
    record(
        title,
        table(
            [
                "configuration",
                "tasks/s",
                "p50 ms",
                "daemon CPU ms/task",
                "PostgreSQL CPU ms/task",
                "each node's CPU / its cap",
                "periods throttled",
                "machine CPU busy",
                "x 1 node",
                "model: N x C_d(1) / C_d(N)",
            ],
            rows,
        )
        + f"\n\ntwo nodes (each way) >= 1.1x one node, capped: **{two_each:.3f}** "
        + f"{verdict(two_each >= 1.1)}"
        + f"\n\nround-robin >= 0.9x partitioned, capped: **{rr:.3f}** {verdict(rr >= 0.9)}"
        + "\n\nThe model column assumes every node is bound by its cap (its CPU / cap "
        + "near 100%) and the machine is not (busy well below 100%); docs/cluster.md.",
    )
    return rates


if __name__ == "__main__":
    asyncio.run(run())
