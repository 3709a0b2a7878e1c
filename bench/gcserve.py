"""``python -m bench.gcserve serve ...``: the daemon, exactly as shipped, with
measurement hooks that live here and not in ``operator_server``.

It installs the hooks named by environment variables, then calls
``operator_server.cli.main`` with the same arguments, so the daemon under
measurement is the real CLI, config loading, logging set-up and ``run_app``.

* ``OPERATOR_SERVER_BENCH_GC_LOG=PATH``: time every garbage collection with
  ``gc.callbacks``; at exit write ``[[monotonic_start, generation, ms], ...]``
  as JSON to PATH.  ``time.monotonic`` is system-wide on Linux, so the bench
  process can pick out the pauses that fell inside its load window.
* ``OPERATOR_SERVER_BENCH_PROFILE=PATH``: run the daemon under cProfile and
  dump the stats to PATH at exit (``python -m pstats PATH``).
* ``OPERATOR_SERVER_BENCH_AUDIT_LOG=PATH``: time the SQLite writer's audit
  append (``store/sqlite.py``'s ``_append_audit``: read the chain's head, hash
  each row into the chain, insert them) on the writer thread's own CPU clock;
  at exit write ``{"rows": N, "calls": N, "cpu_s": S}`` as JSON to PATH.  The
  append still runs, unchanged: this measures the audit trail's cost on the
  thread that commits, without a switch anywhere that turns the trail off.

These variables are read here, before the daemon's config loader sees the
environment, and removed from it: the loader refuses unknown
``OPERATOR_SERVER_*`` variables.
"""

from __future__ import annotations

import cProfile
import gc
import json
import os
import sys
import time
from typing import Any

from operator_server.cli import main as daemon_main

GC_LOG = "OPERATOR_SERVER_BENCH_GC_LOG"
PROFILE = "OPERATOR_SERVER_BENCH_PROFILE"
AUDIT_LOG = "OPERATOR_SERVER_BENCH_AUDIT_LOG"
KEEP_MS = 1.0
KEEP_MAX = 20_000


class GcTimer:
    def __init__(self) -> None:
        self.pauses: list[tuple[float, int, float]] = []
        self.counts = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        now = time.monotonic()
        if phase == "start":
            self._started = now
            return
        generation: int = info["generation"]
        self.counts[generation] += 1
        ms = (now - self._started) * 1000
        if ms >= KEEP_MS and len(self.pauses) < KEEP_MAX:
            self.pauses.append((self._started, generation, ms))

    def dump(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"counts": self.counts, "pauses": self.pauses}, fh)


class AuditTimer:
    """Wraps the SQLite store's audit append, adding up the writer thread's CPU
    time in it.  Installed by replacing the module global the writer calls,
    here in the bench's launcher only: the daemon's code is not changed."""

    def __init__(self) -> None:
        self.rows = 0
        self.calls = 0
        self.cpu_s = 0.0

    def install(self) -> None:
        from operator_server.store import sqlite

        append = sqlite._append_audit

        def timed(conn: Any, node: str, entries: list[Any]) -> None:
            began = time.thread_time()  # the writer thread's CPU, not the wall
            append(conn, node, entries)
            self.cpu_s += time.thread_time() - began
            self.calls += 1
            self.rows += len(entries)

        sqlite._append_audit = timed

    def dump(self, path: str) -> None:
        with open(path, "w") as fh:
            json.dump({"rows": self.rows, "calls": self.calls, "cpu_s": self.cpu_s}, fh)


def main() -> int:
    gc_path = os.environ.pop(GC_LOG, "")
    profile_path = os.environ.pop(PROFILE, "")
    audit_path = os.environ.pop(AUDIT_LOG, "")
    audit = AuditTimer()
    if audit_path:
        audit.install()
    timer = GcTimer()
    if gc_path:
        gc.callbacks.append(timer)
    # On the process's CPU clock, not the wall clock: the bench machine is
    # shared, and time spent waiting for a core is not the daemon's cost.
    profiler = cProfile.Profile(time.process_time) if profile_path else None
    try:
        if profiler is not None:
            code: int = profiler.runcall(daemon_main, sys.argv[1:])
        else:
            code = daemon_main(sys.argv[1:])
    finally:
        if gc_path:
            gc.callbacks.remove(timer)
            timer.dump(gc_path)
        if profiler is not None:
            profiler.dump_stats(profile_path)
        if audit_path:
            audit.dump(audit_path)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
