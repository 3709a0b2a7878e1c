"""End-to-end tasks against a bare relay: POST /v1/tasks -> hook_before ->
spawn -> worker prompt -> worker result -> spawn_ack -> hook_after -> passed,
with 64 in flight.

Both servers are real processes: the daemon through its CLI at the shipped
defaults (SQLite file, ``info`` JSON logs to a file, default timeouts), and
``bench/relay.py``, which does the same routes and frames with no engine and
no persistence.  The same peer process (operator, sub-agents and submitter at
once) drives both, in interleaved rounds; the median of each is reported.

The daemon runs on uvloop (its default ``event_loop``); the relay, the
target's baseline, on the standard loop as a plain aiohttp app would.  The same
relay on uvloop is reported alongside, so the loop's share of the gap shows.

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
RELAY_UVLOOP = "relay on uvloop (reference)"
TOTAL = 3000
WARMUP = 300
ROUNDS = 5
TARGET = 0.6
# Issue 8: group commit keeps the durable store close to the in-memory one.
SQLITE_TARGET = 0.7


async def run(profile: str = "") -> float:
    relay = Relay()
    # For reference only, not the target's baseline: the daemon runs on uvloop
    # (its ``event_loop`` default), so this row shows what the loop alone gives.
    relay_uvloop = Relay(uvloop=True)
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        daemon = Daemon(f"{tmp}/bench.sqlite", tmp, profile=profile)
        # The same daemon with store.path = ":memory:" (its own log file).
        memory_dir = Path(tmp) / "memory"
        memory_dir.mkdir()
        in_memory = Daemon(":memory:", str(memory_dir))
        servers: dict[str, Relay | Daemon] = {
            "relay": relay,
            RELAY_UVLOOP: relay_uvloop,
            "operator_server": daemon,
            MEMORY: in_memory,
        }
        lines_before = 0
        results: dict[str, list[E2E]] = {name: [] for name in servers}
        try:
            for server in servers.values():
                await server.start()
            progress(f"end-to-end: warm-up, {WARMUP} tasks each")
            for server in servers.values():
                await e2e_load(server.url, WARMUP)
            lines_before = daemon.log_lines()
            for r in range(ROUNDS):
                progress(f"end-to-end round {r + 1}/{ROUNDS}: {TOTAL} tasks, {WINDOW} in flight")
                for name, server in servers.items():
                    results[name].append(await e2e_load(server.url, TOTAL))
            lines_per_task = (daemon.log_lines() - lines_before) / (TOTAL * ROUNDS)
        finally:
            for server in servers.values():
                await server.stop()

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
        + "\n\noperator_server / relay on uvloop (reference): "
        + f"{rates['operator_server'] / rates[RELAY_UVLOOP]:.2f}"
        + (f"\n\nprofile of the daemon: {profile}" if profile else ""),
    )
    return ratio


if __name__ == "__main__":
    asyncio.run(run())
