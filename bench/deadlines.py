"""The deadline machinery with 10,000 pending requests (issue 24).

Each pending request holds what an operator session holds for it: a future,
and, with deadlines, its timed steps (``TimedSteps``: the delayed write of
its due time, its reminder at ``remind_at_fraction``, its deadline — one
clock entry at a time) at the shipped defaults (``hook_timeout_s`` 60,
``remind_at_fraction`` 0.8).  Three ways, in the same process, interleaved
over ``ROUNDS``:

* **none**: the futures alone (no deadline at all), the baseline;
* **heap**: the steps on the engine's one ``DeadlineHeap`` (what ships);
* **call_later**: the same steps on event-loop timers (a timer per request).

Measured: memory held by the entries (``tracemalloc``, per request), CPU to
issue all of them, to answer all of them (each reply cancels its entries),
and to let all of them expire at once (each deadline fails its future).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from bench.common import median, progress, record, table, verdict
from operator_server.config import Settings
from operator_server.engine.schedule import DeadlineHeap, LoopTimers, TimedSteps

N = 10_000
ROUNDS = 5
# Per request with deadlines, at most this much memory over none (the issue:
# "10,000 pending requests must cost little").
TARGET_BYTES = 1024


class _Background:
    """Stands in for ``Background`` (``spawn`` and nothing else)."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        return task

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _fail(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


async def _round(way: str) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    settings = Settings()
    deadline_s = settings.hook_timeout_s
    background = _Background()
    clock = DeadlineHeap(background.spawn) if way == "heap" else LoopTimers()

    def issue() -> list[Any]:
        """N pending requests: (futures, clock entries), as a session holds them."""
        futures: list[asyncio.Future[Any]] = []
        entries: list[Any] = []
        now = time.time()
        for _ in range(N):
            future = loop.create_future()
            futures.append(future)
            if way != "none":
                due = now + deadline_s
                steps: list[tuple[float, Callable[[], None]]] = [
                    (now + 1.0, _noop),
                    (due - (1 - settings.remind_at_fraction) * deadline_s, _noop),
                    (due, functools.partial(_fail, future)),
                ]
                entries.append(TimedSteps(clock, steps))
        return [futures, entries]

    # Memory first (tracemalloc slows every allocation: no CPU is read then).
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    held_now = issue()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    for entry in held_now[1]:
        entry.cancel()
    del held_now
    gc.collect()
    cpu = time.process_time()
    futures, entries = issue()
    issue_cpu = time.process_time() - cpu
    await asyncio.sleep(0)  # the heap's one task starts and goes to sleep
    cpu = time.process_time()
    for entry in entries:
        entry.cancel()
    answer_cpu = time.process_time() - cpu
    # All of them expiring at once: issued already due.
    futures = [loop.create_future() for _ in range(N)]
    past = time.time() - 1
    if way != "none":
        for future in futures:
            TimedSteps(clock, [(past, functools.partial(_fail, future))])
    cpu = time.process_time()
    if way != "none":
        await asyncio.wait(futures)
    expire_cpu = time.process_time() - cpu
    for future in futures:
        if future.done():
            future.exception()
    sleepers = len(background.tasks)
    await background.close()
    return {
        "bytes": held / N,
        "issue_ms": issue_cpu * 1000,
        "answer_ms": answer_cpu * 1000,
        "expire_ms": expire_cpu * 1000,
        "tasks": sleepers,
    }


def _noop() -> None:
    pass


async def run() -> dict[str, dict[str, float]]:
    ways = ["none", "heap", "call_later"]
    results: dict[str, list[dict[str, float]]] = {w: [] for w in ways}
    for n in range(ROUNDS):
        progress(f"deadlines: round {n + 1} of {ROUNDS}")
        for way in ways:
            results[way].append(await _round(way))
    rows = []
    out: dict[str, dict[str, float]] = {}
    for way in ways:
        m = {k: median([r[k] for r in results[way]]) for k in results[way][0]}
        out[way] = m
        rows.append(
            [
                way,
                f"{m['bytes']:,.0f}",
                f"{m['issue_ms']:.1f}",
                f"{m['answer_ms']:.1f}",
                f"{m['expire_ms']:.1f}",
                f"{m['tasks']:.0f}",
            ]
        )
    extra = out["heap"]["bytes"] - out["none"]["bytes"]
    body = table(
        [
            f"{N:,} pending requests",
            "bytes per request",
            "issue all (CPU ms)",
            "answer all (CPU ms)",
            "all expire at once (CPU ms)",
            "background tasks",
        ],
        rows,
    )
    body += (
        f"\n\nThe heap over none: {extra:,.0f} bytes per request (target ≤ {TARGET_BYTES}): "
        f"{verdict(extra <= TARGET_BYTES)}. Medians of {ROUNDS} rounds; three steps per "
        "request (delayed write of its due time, reminder, deadline), one clock entry at a time."
    )
    record("deadlines: 10,000 pending requests, one heap vs a timer per request vs none", body)
    return out
