"""End-to-end tasks: POST /v1/tasks -> hook_before -> spawn -> worker prompt ->
worker result -> spawn_ack -> hook_after -> passed, many in flight.

The peer process is the operator, its sub-agents and the task submitter; the
server runs here.  Latency is measured by the submitter from POST to the
long-poll answering ``passed``.
"""

from __future__ import annotations

import asyncio
import tempfile
from typing import Any

from bench.common import Peer, median, percentile, progress, record, serve_operator_server, table

TOTAL = 3000
WINDOW = 64
TARGET = 300


async def measure(**settings: Any) -> tuple[float, float, float]:
    runner, url, _ = await serve_operator_server(**settings)
    peer = await Peer.start("e2e", url, str(TOTAL), str(WINDOW))
    try:
        stats = await peer.line(timeout=600)
    finally:
        await peer.stop()
        await runner.cleanup()
    latencies: list[float] = stats["latencies"]
    return TOTAL / stats["elapsed_s"], median(latencies) * 1000, percentile(latencies, 99) * 1000


async def run() -> dict[str, tuple[float, float, float]]:
    """The same run on each store: in-memory, then SQLite (a fresh file)."""
    results: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("memory", ":memory:"), ("sqlite", f"{tmp}/bench.sqlite")):
            progress(f"end-to-end ({name} store): {TOTAL} tasks, {WINDOW} in flight")
            results[name] = await measure(**{"store.path": path})
    rows = [
        [
            name,
            TOTAL,
            WINDOW,
            f"{rate:,.0f}",
            f"{p50:.1f}",
            f"{p99:.1f}",
            f"≥ {TARGET}/s",
            "met" if rate >= TARGET else "MISSED",
        ]
        for name, (rate, p50, p99) in results.items()
    ]
    ratio = results["sqlite"][0] / results["memory"][0]
    verdict = "met" if ratio >= 0.5 else "MISSED"
    headers = ["store", "tasks", "in flight", "tasks/s", "p50 ms", "p99 ms", "target", ""]
    record(
        "end-to-end tasks",
        table(headers, rows)
        + f"\n\nSQLite / in-memory throughput: {ratio:.2f} (target ≥ 0.5, within 2x): {verdict}",
    )
    return results


if __name__ == "__main__":
    asyncio.run(run())
