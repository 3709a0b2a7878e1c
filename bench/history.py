"""Cost vs history: the daemon over a SQLite store holding 100,000 finished
tasks, against the same daemon over an empty store.

The store is filled through the store's own code (``open_store`` and
``put_task_soon``) with ``Task.to_record()`` of tasks driven through the
engine's own state methods to ``passed`` — the records the daemon writes —
dated over the last day, inside the default retention.

Then a daemon for each store runs as a real process (``python -m
bench.gcserve serve ...``, the shipped CLI with a ``gc.callbacks`` timer),
both at once:

1. start to the first ``/v1/healthz`` answer;
2. a warm-up of ``WARM_TASKS`` end-to-end tasks (so both listings have full pages);
3. ``/v1/healthz`` p50; ``GET /v1/tasks?status=passed&limit=50`` p50 for the
   first page and for a deep page reached by following ``next`` — in
   ``PROBE_ROUNDS`` rounds alternating between the two daemons, the median of
   the rounds' medians (on a shared machine the load drifts between two runs
   made one after the other, and a 20% target on a 4 ms answer cannot tell
   that drift from a cost);
4. ``LOAD_S`` seconds of end-to-end load each: tasks/s, and every GC pause in it;
5. RSS after the load ("live");
6. SIGTERM, start again on the same file: start time and RSS after restart.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from bench.common import (
    Daemon,
    bench_settings,
    e2e_load,
    median,
    p50_ms,
    progress,
    record,
    table,
    verdict,
)
from operator_server.config import Settings
from operator_server.engine import Kind, WorkerResult
from operator_server.engine.faces import Face
from operator_server.engine.tasks import Ending, OperatorSpec, Task, TaskStatus
from operator_server.store import open_store

FILL = 100_000
WARM_TASKS = 1000
LOAD_S = 20.0
PROBES = 500
PROBE_ROUNDS = 5  # PROBES per probe, spread over this many interleaved rounds
# How far to follow ``next`` for the deep page (pages of 50): 20,000 tasks in.
DEEP_PAGES = 400
LIST_QUERY = {"status": "passed", "limit": "50"}

TARGET_RSS_MB = 30
TARGET_START_S = 1.0
TARGET_SLOWER = 1.2
TARGET_GC_MS = 50


def finished_task(i: int, at: float) -> Task:
    """A task as the thin path leaves it: one attempt, served by an operator
    session on every face, a worker's final result and the ack's output."""
    directive = f"bench history task {i}: summarise the report and list its open questions"
    task = Task(
        agent="bench",
        directive=directive,
        system=None,
        operator=OperatorSpec(role="bench"),
        layers=Settings().default_layers,
        kind=Kind.MAIN_AI,
        max_attempts=1,
    )
    attempt = task.start_attempt()
    sid = "op-00000000-0000-4000-8000-000000000000"
    attempt.served_by = {str(face): sid for face in Face}
    result = WorkerResult({"echo": directive})
    attempt.tail.append_final(result, "worker")
    attempt.tail.offer_ack(WorkerResult({}))
    task.end(Ending(TaskStatus.PASSED, result=result))
    task.created_at, attempt.started_at = at, at + 0.004
    attempt.ended_at, task.updated_at = at + 0.008, at + 0.009
    return task


async def fill(path: str, n: int) -> float:
    """Write ``n`` finished tasks through the store's own code; returns seconds."""
    t0 = time.perf_counter()
    store = open_store(bench_settings(path))
    await store.open()
    now = time.time()
    try:
        for i in range(n):
            rec = finished_task(i, now - (n - i) * 0.8).to_record()
            if i % 5000 == 4999:
                # A durable write waits for everything queued before it, which
                # keeps the queue (and this process) small.
                await store.put_task(rec)
                progress(f"fill: {i + 1}/{n}")
            else:
                store.put_task_soon(rec)
    finally:
        await store.close()
    return time.perf_counter() - t0


@dataclass
class Costs:
    start_s: float = 0.0
    restart_s: float = 0.0
    rss_live_mb: float = 0.0
    rss_restart_mb: float = 0.0
    healthz_ms: float = 0.0
    list_first_ms: float = 0.0
    list_deep_ms: float = 0.0
    deep_depth: int = 0
    rate: float = 0.0
    gc_load_max_ms: float = 0.0
    gc_load_full: int = 0
    gc_start_max_ms: float = 0.0
    gc_restart_max_ms: float = 0.0
    gc_counts: list[int] = field(default_factory=list)


def _max_pause(gc: dict[str, Any], t0: float = 0.0, t1: float = float("inf")) -> float:
    return max((ms for at, _, ms in gc["pauses"] if t0 <= at <= t1), default=0.0)


def _follow(base: str, nxt: str) -> str:
    """The URL of the page ``next`` points to: a link if it is one, else the
    opaque cursor as ``after=`` on the same query (never parsed or built here)."""
    if nxt.startswith(("/", "http://", "https://")):
        return str(URL(base).join(URL(nxt)))
    return str(URL(f"{base}/v1/tasks").with_query({**LIST_QUERY, "after": nxt}))


async def _deep_page(http: aiohttp.ClientSession, base: str) -> tuple[str, int]:
    """Follow ``next`` up to DEEP_PAGES pages; the URL of the deepest page and its depth."""
    url = str(URL(f"{base}/v1/tasks").with_query(LIST_QUERY))
    depth = 0
    for _ in range(DEEP_PAGES):
        async with http.get(URL(url, encoded=True)) as resp:
            body = await resp.json()
        if not body.get("next"):
            break
        url = _follow(base, body["next"])
        depth += 1
    return url, depth


class Side:
    """One store's daemon through the steps, so both can be measured side by side."""

    def __init__(self, path: str, workdir: str, label: str) -> None:
        self.path, self.workdir, self.label = path, workdir, label
        self.daemon = Daemon(path, workdir, gc_log=True)
        self.costs = Costs()
        self.ready = 0.0
        self.load_window = (0.0, 0.0)
        self.deep = ""
        self.probes: dict[str, list[float]] = {"healthz": [], "first": [], "deep": []}

    async def start(self) -> None:
        progress(f"history ({self.label}): start")
        self.costs.start_s = await self.daemon.start()
        self.ready = time.monotonic()
        progress(f"history ({self.label}): warm-up, {WARM_TASKS} tasks")
        await e2e_load(self.daemon.url, WARM_TASKS)
        async with aiohttp.ClientSession() as http:
            self.deep, self.costs.deep_depth = await _deep_page(http, self.daemon.url)

    async def probe(self, http: aiohttp.ClientSession, n: int) -> None:
        url = self.daemon.url
        self.probes["healthz"].append(await p50_ms(http, f"{url}/v1/healthz", n))
        self.probes["first"].append(await p50_ms(http, f"{url}/v1/tasks", n, **LIST_QUERY))
        self.probes["deep"].append(await p50_ms(http, self.deep, n))

    async def load(self) -> None:
        progress(f"history ({self.label}): {LOAD_S:.0f} s of end-to-end load")
        t0 = time.monotonic()
        load = await e2e_load(self.daemon.url, 10**9, seconds=LOAD_S)
        self.load_window = (t0, time.monotonic())
        self.costs.rate = load.rate
        self.costs.rss_live_mb = self.daemon.rss_kib() / 1024

    async def stop_and_restart(self) -> Costs:
        c = self.costs
        c.healthz_ms = median(self.probes["healthz"])
        c.list_first_ms = median(self.probes["first"])
        c.list_deep_ms = median(self.probes["deep"])
        await self.daemon.stop()
        gc = self.daemon.gc()
        t0, t1 = self.load_window
        c.gc_counts = gc["counts"]
        c.gc_load_max_ms = _max_pause(gc, t0, t1)
        c.gc_load_full = sum(1 for at, gen, _ in gc["pauses"] if t0 <= at <= t1 and gen == 2)
        c.gc_start_max_ms = _max_pause(gc, 0, self.ready)
        progress(f"history ({self.label}): restart")
        again = Daemon(self.path, self.workdir, gc_log=True)
        c.restart_s = await again.start()
        try:
            c.rss_restart_mb = again.rss_kib() / 1024
        finally:
            await again.stop()
        c.gc_restart_max_ms = _max_pause(again.gc())
        return c


async def measure(empty: Side, full: Side) -> tuple[Costs, Costs]:
    """Both daemons up at once; their latency probes interleaved in rounds
    (a median of round medians), so a drift in machine load between the two
    runs does not read as a cost of history; their loads one after the other."""
    sides = (empty, full)
    try:
        for side in sides:
            await side.start()
        async with aiohttp.ClientSession() as http:
            for r in range(PROBE_ROUNDS):
                progress(f"history: probes, round {r + 1}/{PROBE_ROUNDS}")
                for side in sides if r % 2 == 0 else sides[::-1]:
                    await side.probe(http, PROBES // PROBE_ROUNDS)
        for side in sides:
            await side.load()
    except BaseException:
        for side in sides:
            await side.daemon.stop()
        raise
    return await empty.stop_and_restart(), await full.stop_and_restart()


def report(empty: Costs, full: Costs, fill_s: float) -> str:
    def slower(e: float, f: float) -> tuple[str, str]:
        ratio = f / e if e else float("inf")
        return f"{ratio:.2f}x", verdict(ratio <= TARGET_SLOWER)

    rows: list[list[Any]] = []
    live = full.rss_live_mb - empty.rss_live_mb
    rows.append(
        [
            "RSS live, after load (MB)",
            f"{empty.rss_live_mb:.0f}",
            f"{full.rss_live_mb:.0f}",
            f"+{live:.0f} MB",
            f"≤ +{TARGET_RSS_MB} MB",
            verdict(live <= TARGET_RSS_MB),
        ]
    )
    restart = full.rss_restart_mb - empty.rss_restart_mb
    rows.append(
        [
            "RSS after restart (MB)",
            f"{empty.rss_restart_mb:.0f}",
            f"{full.rss_restart_mb:.0f}",
            f"+{restart:.0f} MB",
            f"≤ +{TARGET_RSS_MB} MB",
            verdict(restart <= TARGET_RSS_MB),
        ]
    )
    for name, e, f in (
        ("start to first healthz (s)", empty.start_s, full.start_s),
        ("restart to first healthz (s)", empty.restart_s, full.restart_s),
    ):
        rows.append(
            [
                name,
                f"{e:.2f}",
                f"{f:.2f}",
                "",
                f"≤ {TARGET_START_S:g} s",
                verdict(f <= TARGET_START_S),
            ]
        )
    for name, e, f in (
        ("healthz p50 (ms)", empty.healthz_ms, full.healthz_ms),
        ("list first page p50 (ms)", empty.list_first_ms, full.list_first_ms),
        (
            f"list deep page p50 (ms; page {empty.deep_depth + 1} vs {full.deep_depth + 1})",
            empty.list_deep_ms,
            full.list_deep_ms,
        ),
    ):
        ratio, ok = slower(e, f)
        rows.append([name, f"{e:.2f}", f"{f:.2f}", ratio, f"≤ {TARGET_SLOWER}x", ok])
    rate_ratio = empty.rate / full.rate if full.rate else float("inf")
    rows.append(
        [
            f"e2e tasks/s ({LOAD_S:.0f} s load; growth: empty/full)",
            f"{empty.rate:,.0f}",
            f"{full.rate:,.0f}",
            f"{rate_ratio:.2f}x",
            f"≤ {TARGET_SLOWER}x",
            verdict(rate_ratio <= TARGET_SLOWER),
        ]
    )
    rows.append(
        [
            "max GC pause during load (ms)",
            f"{empty.gc_load_max_ms:.0f}",
            f"{full.gc_load_max_ms:.0f}",
            "",
            f"≤ {TARGET_GC_MS} ms",
            verdict(full.gc_load_max_ms <= TARGET_GC_MS),
        ]
    )
    rows.append(
        [
            "full (gen 2) GCs ≥ 1 ms during load",
            empty.gc_load_full,
            full.gc_load_full,
            "",
            "",
            "",
        ]
    )
    rows.append(
        [
            "max GC pause in start / restart (ms)",
            f"{empty.gc_start_max_ms:.0f} / {empty.gc_restart_max_ms:.0f}",
            f"{full.gc_start_max_ms:.0f} / {full.gc_restart_max_ms:.0f}",
            "",
            "",
            "",
        ]
    )
    return (
        table(["cost", "empty store", f"{FILL:,} finished", "growth", "target", ""], rows)
        + f"\n\nfilled {FILL:,} tasks in {fill_s:.1f} s; GC collections per generation over"
        + f" the first run: empty {empty.gc_counts}, {FILL:,} {full.gc_counts}"
    )


async def run() -> tuple[Costs, Costs]:
    with tempfile.TemporaryDirectory(prefix="bench-history-") as tmp:
        progress(f"history: filling a store with {FILL:,} finished tasks")
        fill_s = await fill(f"{tmp}/full.sqlite", FILL)
        empty, full = await measure(
            Side(f"{tmp}/empty.sqlite", tmp, "empty"), Side(f"{tmp}/full.sqlite", tmp, f"{FILL:,}")
        )
    record(f"cost vs history ({FILL:,} finished tasks in SQLite)", report(empty, full, fill_s))
    return empty, full


if __name__ == "__main__":
    asyncio.run(run())
