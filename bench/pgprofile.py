"""Where one PostgreSQL node's time goes: a profile of each side under the
cluster bench's load (``python -m bench.pgprofile [--round-robin | --partitioned] [OUT_DIR]``).

A throwaway PostgreSQL (durable, as ``bench/cluster.py`` runs it) with
``pg_stat_statements`` preloaded, the e2e thin path from two peers, on one
daemon (the default) or on two nodes as the cluster bench runs them:
``--round-robin`` creates each peer's tasks on the node *not* holding its
operator's socket, ``--partitioned`` on the node holding it.  Then:

* each daemon's cProfile (``OUT_DIR/<node>.prof``; ``python -m pstats``), its
  top functions by own time printed;
* PostgreSQL's statements by total time, with calls per task: what each task
  costs the server, statement by statement.

Not part of ``make bench`` (it measures where time goes, not how fast): run it
by hand before and after a change to the store, and run round-robin and
partitioned back to back to see what a task placed on the other node costs.
"""

from __future__ import annotations

import asyncio
import io
import pstats
import sys
import tempfile
from pathlib import Path

import asyncpg

from bench.cluster import PEERS, database, pg_node
from bench.common import WINDOW, Daemon, e2e_load, progress
from operator_server.localcluster import throwaway_postgres

TASKS = 2000
WARMUP = 200
TOP = 25
MODES = {"--round-robin": "round-robin", "--partitioned": "partitioned"}


async def statements(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(
            await conn.fetch(
                "SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\\s+', ' ', 'g'),"
                " 110) AS query FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1",
                TOP,
            )
        )
    finally:
        await conn.close()


async def reset(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_statements_reset()")
    finally:
        await conn.close()


async def peers(nodes: list[Daemon], tasks: int, cross: bool) -> int:
    """``tasks`` tasks from PEERS peers, as ``bench.cluster.load`` spreads them:
    peer i's operator on node i mod n, its tasks created on that node or
    (``cross``) the next one; how many passed."""
    runs = await asyncio.gather(
        *(
            e2e_load(
                nodes[i % len(nodes)].url,
                tasks // PEERS,
                window=WINDOW // PEERS,
                task_url=nodes[(i + cross) % len(nodes)].url,
            )
            for i in range(PEERS)
        )
    )
    return sum(r.tasks for r in runs)


async def run(out: Path, mode: str) -> None:
    with (
        tempfile.TemporaryDirectory(prefix="bench-pgprofile-") as tmp,
        throwaway_postgres(durable=True) as pg,
    ):
        conn = await asyncpg.connect(pg.url())
        try:
            await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        finally:
            await conn.close()
        pg.stop()
        pg.start()
        url = await database(pg, "prof")
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("CREATE EXTENSION pg_stat_statements")
        finally:
            await conn.close()
        names = ["prof-a"] if mode == "one node" else ["prof-a", "prof-b"]
        nodes = [pg_node(url, tmp, name) for name in names]
        for node, name in zip(nodes, names, strict=True):
            node.profile = str(out / f"{name}.prof")
        started: list[Daemon] = []
        try:
            for node in nodes:
                await node.start()
                started.append(node)
            cross = mode == "round-robin"
            await peers(nodes, WARMUP, cross)
            await reset(url)
            progress(f"pgprofile ({mode}): {TASKS} tasks, {WINDOW} in flight")
            cpu0 = [node.cpu_s() for node in nodes]
            tasks = await peers(nodes, TASKS, cross)
            cpu = [node.cpu_s() - c for node, c in zip(nodes, cpu0, strict=True)]
            rows = await statements(url)
        finally:
            for node in started:
                await node.stop()
    per_node = ", ".join(
        f"{name} {c * 1000 / tasks:.2f}" for name, c in zip(names, cpu, strict=True)
    )
    print(
        f"\n{mode}: {tasks} tasks, daemon CPU {sum(cpu) * 1000 / tasks:.2f} ms/task"
        f" ({per_node}; under cProfile)\n"
    )
    print("| statement | calls/task | ms/task | rows/call |\n|---|---|---|---|")
    for row in rows:
        query = row["query"].replace("|", "\\|")
        print(
            f"| `{query}` | {row['calls'] / tasks:.2f} | {row['total_exec_time'] / tasks:.3f} "
            f"| {row['rows'] / max(row['calls'], 1):.1f} |"
        )
    for name in names:
        text = io.StringIO()
        stats = pstats.Stats(str(out / f"{name}.prof"), stream=text)
        stats.sort_stats("tottime").print_stats(TOP)
        print(f"\n## {name}\n{text.getvalue()}")


if __name__ == "__main__":
    args = sys.argv[1:]
    chosen = [MODES[a] for a in args if a in MODES]
    paths = [a for a in args if a not in MODES]
    target = Path(paths[0] if paths else tempfile.mkdtemp(prefix="pgprofile-"))
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(target, chosen[0] if chosen else "one node"))
