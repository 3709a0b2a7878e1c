"""Cluster mode: end-to-end tasks/s with one node vs two on PostgreSQL, and
PostgreSQL vs SQLite on one node, under the same load.

The load is bench/e2e.py's thin path (POST /v1/tasks -> hook_before -> spawn
-> worker prompt -> worker result -> spawn_ack -> hook_after -> passed), 64 in
flight, from two peer processes of 32 each, so that the load generator is the
same in every configuration:

* SQLite, 1 node: both peers on one daemon with a SQLite file (the default).
* PostgreSQL, 1 node: both peers on one daemon on PostgreSQL.
* PostgreSQL, 2 nodes, round-robin: one peer's operator per node, each with
  its own role, and each peer creates its tasks on the *other* node — what a
  round-robin load balancer does to half the requests, here to all of them:
  every task runs (and holds its lease) on the node that did not get its
  operator, so every frame to the operator and every reply crosses nodes
  through PostgreSQL (a ``pending_requests`` row, a NOTIFY), and so does every
  worker call (the spawn directive sends them to the operator's node).
* PostgreSQL, 2 nodes, partitioned: the same two nodes, each peer creating its
  tasks on the node holding its operator (a load balancer that routes by
  role): nothing crosses nodes but the shared store.
* PostgreSQL fsync=off, 1 node: the same server with commits that do not wait
  for the disk, to show what the commit latency costs.

All daemons are real processes at the shipped defaults (bench/common.py), all
on one throwaway PostgreSQL (operator_server/localcluster.py), with PostgreSQL's
own durable defaults (fsync on, synchronous_commit on) unless said otherwise, as
SQLite runs with synchronous=FULL.  Besides the rate, each row reports the
daemons' CPU per task, the store commits per task (group commit: one
transaction per batch per node) and the whole machine's CPU use during the
load — on 2 cores shared by daemons, PostgreSQL and peers, that last column
says what limits the rate.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import (
    E2E,
    WINDOW,
    Daemon,
    e2e_load,
    median,
    progress,
    record,
    table,
    verdict,
)
from operator_server.localcluster import Postgres, throwaway_postgres

PEERS = 2
TOTAL = 2000
WARMUP = 200
ROUNDS = 3
COMMIT_SAMPLES = 200
SQLITE = "SQLite, 1 node"
ONE = "PostgreSQL, 1 node"
ROUND_ROBIN = "PostgreSQL, 2 nodes, round-robin"
PARTITIONED = "PostgreSQL, 2 nodes, partitioned"
# Issue 26 §3's targets: (what, numerator, denominator, at least).
TARGETS = (
    ("round-robin / partitioned", ROUND_ROBIN, PARTITIONED, 0.9),
    ("two nodes partitioned / one node", PARTITIONED, ONE, 1.1),
    ("two nodes round-robin / one node", ROUND_ROBIN, ONE, 1.1),
    ("PostgreSQL one node / SQLite", ONE, SQLITE, 0.6),
)


@dataclass
class Load:
    tasks: int
    seconds: float
    p50_ms: float
    daemon_cpu_ms: float  # per task, all nodes together
    postgres_cpu_ms: float  # per task (0 for SQLite: it runs in the daemon)
    commits: float  # store transactions per task, all nodes together
    commit_ms: float  # mean store transaction, begin to commit
    machine_busy: float  # fraction of all CPUs busy during the load

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def postgres_cpu_s(pg: Postgres) -> float:
    """CPU seconds of the server: its postmaster, the children it has reaped
    (autovacuum workers and closed backends come and go), and its live children."""
    postmaster = int((pg.root / "data" / "postmaster.pid").read_text().split()[0])
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid, ppid = int(stat.parent.name), int(fields[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
        elif ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


async def commit_stats(http: aiohttp.ClientSession, node: Daemon) -> tuple[float, float]:
    """(count, sum of seconds) of the daemon's store commits, from /metrics."""
    async with http.get(f"{node.url}/metrics") as resp:
        text = await resp.text()
    values = {}
    for line in text.splitlines():
        if line.startswith("operator_server_store_commit_seconds_"):
            name, value = line.rsplit(" ", 1)
            values[name.rsplit("_", 1)[1]] = float(value)
    return values.get("count", 0.0), values.get("sum", 0.0)


@dataclass
class Config:
    nodes: list[Daemon]
    server: Postgres | None  # None: SQLite
    cross: bool = False  # tasks created on the node after the operator's


async def load(config: Config, total: int) -> Load:
    """``total`` tasks from PEERS peers: peer i's operator on node i mod n, its
    tasks created on that node or (``cross``) the next one."""
    nodes, pg = config.nodes, config.server
    async with aiohttp.ClientSession() as http:
        before = [await commit_stats(http, n) for n in nodes]
        cpu_before = sum(n.cpu_s() for n in nodes)
        pg_before = postgres_cpu_s(pg) if pg else 0.0
        busy0, all0 = machine_ticks()
        runs: list[E2E] = await asyncio.gather(
            *(
                e2e_load(
                    nodes[i % len(nodes)].url,
                    total // PEERS,
                    window=WINDOW // PEERS,
                    task_url=nodes[(i + config.cross) % len(nodes)].url,
                )
                for i in range(PEERS)
            )
        )
        busy1, all1 = machine_ticks()
        cpu = sum(n.cpu_s() for n in nodes) - cpu_before
        pg_cpu = postgres_cpu_s(pg) - pg_before if pg else 0.0
        after = [await commit_stats(http, n) for n in nodes]
    tasks = sum(r.tasks for r in runs)
    commits = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    commit_s = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    return Load(
        tasks,
        max(r.seconds for r in runs),
        median([r.p50_ms for r in runs]),
        cpu * 1000 / tasks,
        pg_cpu * 1000 / tasks,
        commits / tasks,
        commit_s * 1000 / max(commits, 1),
        (busy1 - busy0) / max(all1 - all0, 1),
    )


async def database(pg: Postgres, name: str) -> str:
    conn = await asyncpg.connect(pg.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return pg.url(name)


async def postgres_commit_ms(url: str) -> float:
    """Median of single-row INSERT transactions, one at a time: the commit latency."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE commit_probe (id serial PRIMARY KEY, v text)")
        times = []
        for _ in range(COMMIT_SAMPLES):
            t0 = time.perf_counter()
            await conn.execute("INSERT INTO commit_probe (v) VALUES ('x')")
            times.append(time.perf_counter() - t0)
        return median(times) * 1000
    finally:
        await conn.close()


def sqlite_commit_ms(path: str) -> float:
    """The same probe on SQLite as the daemon runs it (WAL, synchronous=FULL)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("CREATE TABLE commit_probe (id INTEGER PRIMARY KEY, v TEXT)")
        times = []
        for _ in range(COMMIT_SAMPLES):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO commit_probe (v) VALUES ('x')")
            times.append(time.perf_counter() - t0)
        return median(times) * 1000
    finally:
        conn.close()


def pg_node(url: str, tmp: str, node_id: str, **extra: str) -> Daemon:
    workdir = Path(tmp) / node_id
    workdir.mkdir()
    settings = {"store_url": url, "node_id": node_id, **extra}
    return Daemon(str(workdir / "unused.sqlite"), str(workdir), settings=settings)


def targets(rates: dict[str, float]) -> list[str]:
    """One line per target of ``TARGETS``: the measured ratio, met or MISSED."""
    lines = []
    for what, num, den, floor in TARGETS:
        ratio = rates[num] / rates[den]
        lines.append(f"{what} >= {floor:g}x: **{ratio:.3f}** {verdict(ratio >= floor)}")
    return lines


async def run() -> dict[str, float]:
    with (
        tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp,
        throwaway_postgres(durable=True) as pg,
        throwaway_postgres() as fast_pg,
    ):
        commit_ms = {
            "SQLite": sqlite_commit_ms(f"{tmp}/probe.sqlite"),
            "PostgreSQL": await postgres_commit_ms(await database(pg, "probe")),
            "PostgreSQL fsync=off": await postgres_commit_ms(await database(fast_pg, "probe")),
        }
        (Path(tmp) / "sqlite").mkdir()
        two = [
            pg_node(await database(pg, "two"), tmp, "two-a"),
            pg_node(pg.url("two"), tmp, "two-b"),
        ]
        configs: dict[str, Config] = {
            SQLITE: Config([Daemon(f"{tmp}/sqlite/bench.sqlite", f"{tmp}/sqlite")], None),
            ONE: Config([pg_node(await database(pg, "one"), tmp, "one-a")], pg),
            ROUND_ROBIN: Config(two, pg, cross=True),
            PARTITIONED: Config(two, pg),
            "PostgreSQL fsync=off, 1 node": Config(
                [pg_node(await database(fast_pg, "fast"), tmp, "fast-a")], fast_pg
            ),
        }
        results: dict[str, list[Load]] = {name: [] for name in configs}
        started: list[Daemon] = []
        try:
            for config in configs.values():
                for node in config.nodes:
                    if node not in started:
                        await node.start()
                        started.append(node)
            progress(f"cluster: warm-up, {WARMUP} tasks each")
            for config in configs.values():
                await load(config, WARMUP)
            for r in range(ROUNDS):
                progress(f"cluster round {r + 1}/{ROUNDS}: {TOTAL} tasks, {WINDOW} in flight")
                for name, config in configs.items():
                    results[name].append(await load(config, TOTAL))
        finally:
            for node in started:
                await node.stop()

    rates = {name: median([x.rate for x in runs]) for name, runs in results.items()}
    rows = [
        [
            name,
            f"{rates[name]:,.0f}",
            f"{median([x.p50_ms for x in runs]):.1f}",
            f"{median([x.daemon_cpu_ms for x in runs]):.2f}",
            f"{median([x.postgres_cpu_ms for x in runs]):.2f}",
            f"{median([x.commits for x in runs]):.2f}",
            f"{median([x.commit_ms for x in runs]):.2f}",
            f"{median([x.machine_busy for x in runs]):.0%}",
        ]
        for name, runs in results.items()
    ]
    record(
        f"cluster: tasks/s by store and nodes (median of {ROUNDS} interleaved rounds, "
        f"{TOTAL} tasks, {WINDOW} in flight from {PEERS} peers)",
        table(
            [
                "configuration",
                "tasks/s",
                "p50 ms",
                "daemon CPU ms/task",
                "PostgreSQL CPU ms/task",
                "commits/task",
                "ms/commit",
                "machine CPU busy",
            ],
            rows,
        )
        + "\n\n2 nodes / 1 node on PostgreSQL: "
        + f"round-robin **{rates[ROUND_ROBIN] / rates[ONE]:.2f}**, "
        + f"partitioned **{rates[PARTITIONED] / rates[ONE]:.2f}**"
        + "\n\nPostgreSQL / SQLite, 1 node: "
        + f"**{rates[ONE] / rates[SQLITE]:.2f}**"
        + "\n\nissue 26 §3, on this machine (daemons, PostgreSQL and peers on shared cores):\n"
        + "\n".join(f"- {line}" for line in targets(rates))
        + "\n\nsingle-row commit latency, one at a time (median of "
        + f"{COMMIT_SAMPLES}): "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in commit_ms.items()),
    )
    return rates


if __name__ == "__main__":
    asyncio.run(run())
