"""Where one PostgreSQL node's time goes: a profile of each side under the
cluster bench's load (``python -m bench.pgprofile [OUT_DIR]``).

One daemon on a throwaway PostgreSQL (durable, as ``bench/cluster.py`` runs
it) with ``pg_stat_statements`` preloaded, the e2e thin path from two peers,
then:

* the daemon's cProfile (``OUT_DIR/daemon.prof``; ``python -m pstats``), its
  top functions by own time printed;
* PostgreSQL's statements by total time, with calls per task: what each task
  costs the server, statement by statement.

Not part of ``make bench`` (it measures where time goes, not how fast): run it
by hand before and after a change to the store.
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
from bench.common import WINDOW, e2e_load, progress
from operator_server.localcluster import throwaway_postgres

TASKS = 2000
WARMUP = 200
TOP = 25


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


async def run(out: Path) -> None:
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
        node = pg_node(url, tmp, "prof-a")
        node.profile = str(out / "daemon.prof")
        await node.start()
        try:
            await e2e_load(node.url, WARMUP)
            await reset(url)
            progress(f"pgprofile: {TASKS} tasks, {WINDOW} in flight")
            cpu0 = node.cpu_s()
            runs = await asyncio.gather(
                *(e2e_load(node.url, TASKS // PEERS, window=WINDOW // PEERS) for _ in range(PEERS))
            )
            cpu = node.cpu_s() - cpu0
            rows = await statements(url)
        finally:
            await node.stop()
    tasks = sum(r.tasks for r in runs)
    print(f"\n{tasks} tasks, daemon CPU {cpu * 1000 / tasks:.2f} ms/task (under cProfile)\n")
    print("| statement | calls/task | ms/task | rows/call |\n|---|---|---|---|")
    for row in rows:
        query = row["query"].replace("|", "\\|")
        print(
            f"| `{query}` | {row['calls'] / tasks:.2f} | {row['total_exec_time'] / tasks:.3f} "
            f"| {row['rows'] / max(row['calls'], 1):.1f} |"
        )
    text = io.StringIO()
    pstats.Stats(str(out / "daemon.prof"), stream=text).sort_stats("tottime").print_stats(TOP)
    print(text.getvalue())


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="pgprofile-"))
    target.mkdir(parents=True, exist_ok=True)
    asyncio.run(run(target))
