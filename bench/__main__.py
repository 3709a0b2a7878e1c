"""``make bench``: every benchmark at the shipped defaults, each against its
baseline in the same run.

    python -m bench                      # all of them (a few minutes)
    python -m bench e2e history          # some of them
    python -m bench e2e --profile p.prof # the daemon of the e2e run under cProfile
    make bench ARGS="ask"                # the same through make

Results are printed and written to a dated file under bench/history/
(gitignored), never to a tracked file: bench/RESULTS.md is the current table,
updated by hand from a run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bench import (
    ask_rtt,
    bigasks,
    cli,
    cluster,
    cluster_limited,
    deadlines,
    e2e,
    fanout,
    history,
    keys,
    many,
    overhead,
    requests_list,
    start,
    takeover,
    tracing,
)
from bench.common import history_file, progress

# name -> (what it measures, how to run it).
BENCHMARKS: dict[str, tuple[str, Callable[[argparse.Namespace], Awaitable[object]]]] = {
    "ask": ("ask round trips vs raw aiohttp", lambda a: ask_rtt.run()),
    "bigasks": ("one handle's 80 asks of 200 KB: latency, RSS, stop", lambda a: bigasks.run()),
    "cli": (
        "--help, task get and the MCP bridge's first answer vs python -c pass",
        lambda a: cli.run(),
    ),
    "cluster": ("e2e tasks/s: 1 vs 2 nodes on PostgreSQL, and vs SQLite", lambda a: cluster.run()),
    "cluster-limited": (
        "e2e tasks/s: 1 vs 2 nodes, each daemon capped at a fraction of a core (cgroups)",
        lambda a: cluster_limited.run(),
    ),
    "deadlines": (
        "10,000 pending requests' deadlines: one heap vs a timer each vs none",
        lambda a: deadlines.run(),
    ),
    "e2e": ("end-to-end tasks vs a bare relay", lambda a: e2e.run(profile=a.profile)),
    "fanout": ("a task burst with 500 live event streams vs none", lambda a: fanout.run()),
    "history": ("cost vs 100,000 finished tasks", lambda a: history.run()),
    "keys": (
        "e2e tasks/s: an API key and a JWT vs the bootstrap token; the audit trail's cost",
        lambda a: keys.run(),
    ),
    "many": ("1,000 connected operators", lambda a: many.run()),
    "overhead": ("metrics, events and access log: on vs off", lambda a: overhead.run()),
    "requests": (
        "GET /v1/requests latency with 100 vs 10,000 pending; daemon memory",
        lambda a: requests_list.run(),
    ),
    "start": ("exec to first healthz on an empty store, and where it goes", lambda a: start.run()),
    "takeover": ("a SIGKILLed node's tasks re-dispatched, vs lease_s", lambda a: takeover.run()),
    "tracing": (
        "e2e tasks/s: tracing on (spans dropped) and off vs a build without it",
        lambda a: tracing.run(),
    ),
}


async def main(args: argparse.Namespace) -> None:
    names = args.names or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"python -m bench: unknown {unknown}; choose from {list(BENCHMARKS)}")
    out = history_file()
    print(f"operator_server benchmarks: {', '.join(names)} (progress on stderr; results in {out})")
    for name in names:
        t0 = time.perf_counter()
        await BENCHMARKS[name][1](args)
        progress(f"{name}: {time.perf_counter() - t0:.0f} s")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="; ".join(f"{k}: {v[0]}" for k, v in BENCHMARKS.items()) + " (default: all)",
    )
    p.add_argument("--profile", default="", metavar="PATH", help="cProfile the e2e daemon")
    return p


if __name__ == "__main__":
    asyncio.run(main(parser().parse_args()))
