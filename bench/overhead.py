"""What metrics, task events and the access log cost end to end (issue 10).

The same e2e load as ``bench/e2e.py`` (64 in flight, the thin path) against
three daemons of the same code, each a real process on its own SQLite file,
in interleaved rounds:

* ``defaults``: the shipped defaults (metrics and events on, access log off);
* ``all on``: the defaults plus ``access_log = true``;
* ``all off``: ``metrics = false``, ``events = false``, ``access_log = false``.

The target is on the shipped defaults: at most 5% slower than ``all off``.
``all on`` is reported alongside, so the access log's own price is visible.

Each round also reads the daemon's CPU time (all threads, from /proc): on a
machine shared with other work, rates move by tens of percent between rounds,
while CPU milliseconds per task barely do, so the CPU cost is the steadier
reading of the same question.
"""

from __future__ import annotations

import asyncio
import tempfile

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

TOTAL = 3000
WARMUP = 300
ROUNDS = 5
TARGET = 0.05

VARIANTS: dict[str, dict[str, str]] = {
    "all off": {"metrics": "false", "events": "false", "access_log": "false"},
    "defaults": {},
    "all on": {"access_log": "true"},
}


async def run() -> float:
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        daemons = {
            name: Daemon(f"{tmp}/{i}.sqlite", tmp, settings=settings)
            for i, (name, settings) in enumerate(VARIANTS.items())
        }
        results: dict[str, list[E2E]] = {name: [] for name in daemons}
        cpu_ms: dict[str, list[float]] = {name: [] for name in daemons}
        try:
            for daemon in daemons.values():
                await daemon.start()
            progress(f"overhead: warm-up, {WARMUP} tasks each")
            for daemon in daemons.values():
                await e2e_load(daemon.url, WARMUP)
            for r in range(ROUNDS):
                progress(f"overhead round {r + 1}/{ROUNDS}: {TOTAL} tasks each, {WINDOW} in flight")
                # Rotate who goes first, so a drift in machine load spreads evenly.
                names = list(daemons)
                names = names[r % len(names) :] + names[: r % len(names)]
                for name in names:
                    before = daemons[name].cpu_s()
                    results[name].append(await e2e_load(daemons[name].url, TOTAL))
                    cpu_ms[name].append((daemons[name].cpu_s() - before) * 1000 / TOTAL)
        finally:
            for daemon in daemons.values():
                await daemon.stop()

    rates = {name: median([e.rate for e in runs]) for name, runs in results.items()}
    base = rates["all off"]
    cpus = {name: median(v) for name, v in cpu_ms.items()}
    rows = [
        [
            name,
            ", ".join(f"{k}={v}" for k, v in VARIANTS[name].items()) or "(none)",
            f"{rates[name]:,.0f}",
            f"{median([e.p50_ms for e in runs]):.1f}",
            f"{median([e.p99_ms for e in runs]):.1f}",
            f"{(1 - rates[name] / base) * 100:+.1f}%",
            f"{cpus[name]:.3f}",
            f"{(cpus[name] / cpus['all off'] - 1) * 100:+.1f}%",
        ]
        for name, runs in results.items()
    ]
    cost = 1 - rates["defaults"] / base
    cpu_cost = cpus["defaults"] / cpus["all off"] - 1
    headers = ["daemon", "settings", "tasks/s", "p50 ms", "p99 ms", "throughput cost"]
    record(
        f"overhead of metrics, events and the access log (median of {ROUNDS} interleaved rounds)",
        table([*headers, "daemon CPU ms/task", "CPU cost"], rows)
        + f"\n\ncost of the shipped defaults vs all off: **{cost * 100:.1f}%**"
        + f" (target ≤ {TARGET * 100:.0f}%): {verdict(cost <= TARGET)}"
        + f"\n\ndaemon CPU per task, defaults vs all off: **{cpu_cost * 100:+.1f}%**"
        + f" (target ≤ {TARGET * 100:.0f}%): {verdict(cpu_cost <= TARGET)}"
        + f"\n\ncost with the access log on too: {(1 - rates['all on'] / base) * 100:.1f}%",
    )
    return cost


if __name__ == "__main__":
    asyncio.run(run())
