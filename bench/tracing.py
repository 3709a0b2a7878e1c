"""What OpenTelemetry tracing costs end to end (issue 27).

The e2e load of ``bench/e2e.py`` (64 in flight, the thin path: a spawn per
task) against three daemons, each a real process on its own SQLite file, in
interleaved rounds:

* ``without``: a build without tracing at all: the tree of the commit before
  it (``BASE``, checked out with ``git archive`` into a temporary directory and
  run from there, the same interpreter and dependencies);
* ``off``: this build at the shipped defaults (``[tracing] enabled = false``:
  no provider, each hook a call that returns);
* ``on``: this build with ``[tracing] enabled = true``, exporting over
  OTLP/HTTP to a local endpoint this benchmark serves, which answers 200 and
  drops every span (a collector that costs nothing), sampling every trace.

``off`` vs ``without`` is the issue's "costs nothing measurable when off";
``on`` vs ``off`` is what turning it on costs (the spans, the batch processor's
thread, protobuf encoding and the HTTP export).  Like ``overhead``, each round
also reads the daemon's CPU per task (all threads), the steadier reading on a
shared machine.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from pathlib import Path

from aiohttp import web

from bench.common import (
    ROOT,
    Daemon,
    interleaved,
    median,
    record,
    serve,
    table,
    verdict,
)

# The last commit before tracing: the build without it.
BASE = "39b9bd7"
TOTAL = 2000
WARMUP = 300
ROUNDS = 7
# "Costs nothing measurable when off": within what two same-code daemons
# differ by on this shared VM (``overhead``: up to ~4%).
TARGET_OFF = 0.04


class SpanSink:
    """A local OTLP/HTTP endpoint that takes every export and drops it."""

    def __init__(self) -> None:
        self.exports = 0

    async def traces(self, request: web.Request) -> web.Response:
        await request.read()
        self.exports += 1
        return web.Response(body=b"", content_type="application/x-protobuf")


def checkout(commit: str, into: Path) -> Path:
    """The tree of ``commit`` under ``into``, read from this repository."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", commit], check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


async def run() -> float:
    sink = SpanSink()
    app = web.Application()
    app.router.add_post("/v1/traces", sink.traces)
    runner, sink_url = await serve(app)
    with tempfile.TemporaryDirectory(prefix="bench-tracing-") as tmp:
        base = checkout(BASE, Path(tmp) / "base")
        daemons = {
            "without": Daemon(f"{tmp}/0.sqlite", tmp, source=base),
            "off": Daemon(f"{tmp}/1.sqlite", tmp),
            "on": Daemon(
                f"{tmp}/2.sqlite",
                tmp,
                settings={"tracing_enabled": "true", "tracing_otlp_endpoint": sink_url},
            ),
        }
        try:
            results, cpu_ms = await interleaved("tracing", daemons, ROUNDS, TOTAL, WARMUP)
        finally:
            await runner.cleanup()

    rates = {name: median([e.rate for e in runs]) for name, runs in results.items()}
    cpus = {name: median(v) for name, v in cpu_ms.items()}
    what = {
        "without": f"commit {BASE}, before tracing",
        "off": "this build, [tracing] enabled = false (default)",
        "on": "this build, enabled, OTLP/HTTP to a sink that drops spans",
    }
    rows = [
        [
            name,
            what[name],
            f"{rates[name]:,.0f}",
            f"{median([e.p50_ms for e in runs]):.1f}",
            f"{median([e.p99_ms for e in runs]):.1f}",
            f"{(1 - rates[name] / rates['without']) * 100:+.1f}%",
            f"{cpus[name]:.3f}",
            f"{(cpus[name] / cpus['without'] - 1) * 100:+.1f}%",
        ]
        for name, runs in results.items()
    ]
    off_cost = 1 - rates["off"] / rates["without"]
    off_cpu = cpus["off"] / cpus["without"] - 1
    on_cost = 1 - rates["on"] / rates["off"]
    on_cpu = cpus["on"] / cpus["off"] - 1
    headers = ["daemon", "build and settings", "tasks/s", "p50 ms", "p99 ms", "vs without"]
    record(
        f"tracing: e2e without it, off and on (median of {ROUNDS} interleaved rounds)",
        table([*headers, "daemon CPU ms/task", "CPU vs without"], rows)
        + f"\n\noff vs without: **{off_cost * 100:+.1f}%** slower,"
        f" **{off_cpu * 100:+.1f}%** daemon CPU per task (target ≤ {TARGET_OFF * 100:.0f}%):"
        f" {verdict(max(off_cost, off_cpu) <= TARGET_OFF)}"
        + f"\n\non vs off: **{on_cost * 100:+.1f}%** slower, **{on_cpu * 100:+.1f}%** daemon CPU"
        f" per task; the sink took {sink.exports} exports",
    )
    return off_cost


if __name__ == "__main__":
    asyncio.run(run())
