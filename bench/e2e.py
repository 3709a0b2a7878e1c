"""End-to-end tasks against a bare relay: POST /v1/tasks -> hook_before ->
spawn -> worker prompt -> worker result -> spawn_ack -> hook_after -> passed,
with 64 in flight.

Both servers are real processes: the daemon through its CLI at the shipped
defaults (SQLite file, ``info`` JSON logs to a file, default timeouts), and
``bench/relay.py``, which does the same routes and frames with no engine and
no persistence.  The same peer process (operator, sub-agents and submitter at
once) drives both, in interleaved rounds; the median of each is reported.

``--profile PATH`` runs the daemon under cProfile (``python -m pstats PATH``).
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

from bench.common import (
    E2E,
    WINDOW,
    Daemon,
    Relay,
    e2e_load,
    median,
    progress,
    record,
    table,
    verdict,
)

MEMORY = "operator_server, store :memory:"
TOTAL = 3000
WARMUP = 300
ROUNDS = 3
TARGET = 0.6
# Issue 8: group commit keeps the durable store close to the in-memory one.
SQLITE_TARGET = 0.7


async def run(profile: str = "") -> float:
    relay = Relay()
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        daemon = Daemon(f"{tmp}/bench.sqlite", tmp, profile=profile)
        # The same daemon with store.path = ":memory:" (its own log file).
        memory_dir = Path(tmp) / "memory"
        memory_dir.mkdir()
        in_memory = Daemon(":memory:", str(memory_dir))
        await relay.start()
        await daemon.start()
        await in_memory.start()
        lines_before = 0
        results: dict[str, list[E2E]] = {"relay": [], "operator_server": [], MEMORY: []}
        try:
            progress(f"end-to-end: warm-up, {WARMUP} tasks each")
            await e2e_load(relay.url, WARMUP)
            await e2e_load(daemon.url, WARMUP)
            await e2e_load(in_memory.url, WARMUP)
            lines_before = daemon.log_lines()
            for r in range(ROUNDS):
                progress(f"end-to-end round {r + 1}/{ROUNDS}: {TOTAL} tasks, {WINDOW} in flight")
                results["relay"].append(await e2e_load(relay.url, TOTAL))
                results["operator_server"].append(await e2e_load(daemon.url, TOTAL))
                results[MEMORY].append(await e2e_load(in_memory.url, TOTAL))
            lines_per_task = (daemon.log_lines() - lines_before) / (TOTAL * ROUNDS)
        finally:
            await relay.stop()
            await daemon.stop()
            await in_memory.stop()

    rates = {name: median([e.rate for e in runs]) for name, runs in results.items()}
    rows = [
        [
            name,
            TOTAL,
            WINDOW,
            f"{rates[name]:,.0f}",
            f"{median([e.p50_ms for e in runs]):.1f}",
            f"{median([e.p99_ms for e in runs]):.1f}",
        ]
        for name, runs in results.items()
    ]
    ratio = rates["operator_server"] / rates["relay"]
    met = verdict(ratio >= TARGET)
    durable = rates["operator_server"] / rates[MEMORY]
    record(
        f"end-to-end tasks vs bare relay (median of {ROUNDS} interleaved rounds)",
        table(["server", "tasks", "in flight", "tasks/s", "p50 ms", "p99 ms"], rows)
        + f"\n\noperator_server / relay: **{ratio:.2f}** (target ≥ {TARGET}): {met}"
        + f"\n\nSQLite / in-memory store: **{durable:.2f}** (target ≥ {SQLITE_TARGET}): "
        + verdict(durable >= SQLITE_TARGET)
        + f"\n\nlog lines per task at info: {lines_per_task:.1f}"
        + (f"\n\nprofile of the daemon: {profile}" if profile else ""),
    )
    return ratio


if __name__ == "__main__":
    asyncio.run(run())
