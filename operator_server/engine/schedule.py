"""``DeadlineHeap``: every request deadline and reminder of the process on one
heap, served by one sleeping background task (``deadlines``).

A timer per request (``loop.call_later``) costs a ``TimerHandle`` in the
loop's own heap and a cancellation per reply; with 10,000 pending requests
that is 10,000 handles the loop re-sorts on every reply.  Here an entry is a
small tuple on a heap the loop never sees; a cancelled entry is only marked
and dropped when it reaches the top (or when cancelled ones outnumber the
live ones), so a reply costs a flag.  ``make bench ARGS=deadlines`` measures
both.

Times are absolute unix seconds (``time.time()``), the form deadlines are
stored in: a deadline read back after a restart is scheduled as it is.  The
task sleeps until the earliest entry (or until an earlier one is added), and
runs every entry that is due, in due order, as a plain callback: callbacks
must not block.  It is started on the first ``at`` through ``Background``
(named, cancelled at shutdown).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any

from operator_server.logs import get_logger

log = get_logger(__name__)
Spawn = Callable[..., "asyncio.Task[Any]"]
# Rebuild the heap once this many cancelled entries make up more than half of it.
_COMPACT_AT = 1024


class Timer:
    """One scheduled callback; ``cancel`` before it runs and it never does."""

    __slots__ = ("_heap", "callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None], heap: DeadlineHeap) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.cancelled = False
        self._heap = heap

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.callback = None  # whatever it closed over can go now
            self._heap.dropped()


class DeadlineHeap:
    def __init__(self, spawn: Spawn) -> None:
        self._spawn = spawn
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[Any] | None = None
        self._cancelled = 0

    def __len__(self) -> int:
        """Entries still to run (cancelled ones not counted)."""
        return len(self._heap) - self._cancelled

    def at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` at unix time ``when`` (at once if it has passed)."""
        timer = Timer(when, callback, self)
        earliest = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (when, next(self._seq), timer))
        if self._runner is None or self._runner.done():
            try:
                self._runner = self._spawn(self._run(), name="deadlines")
            except RuntimeError:  # shutting down: nothing is started, nothing is due any more
                self._runner = None
        elif earliest is None or when < earliest:
            self._wake.set()  # the sleeper's alarm is later than this one
        return timer

    def dropped(self) -> None:
        self._cancelled += 1
        if self._cancelled > _COMPACT_AT and self._cancelled * 2 > len(self._heap):
            self._heap = [entry for entry in self._heap if not entry[2].cancelled]
            heapq.heapify(self._heap)
            self._cancelled = 0

    async def _run(self) -> None:
        while True:
            heap = self._heap  # compaction may have replaced the list
            while heap and heap[0][2].cancelled:
                heapq.heappop(heap)
                self._cancelled -= 1
            if not heap:
                self._wake.clear()
                await self._wake.wait()
                continue
            delay = heap[0][0] - time.time()
            if delay > 0:
                self._wake.clear()
                await _sleep_or_wake(self._wake, delay)
                continue
            _, _, timer = heapq.heappop(heap)
            callback, timer.callback = timer.callback, None
            timer.cancelled = True  # ran: a later cancel is a no-op
            if callback is not None:
                try:
                    callback()
                except Exception:  # one bad callback must not stop every deadline
                    log.exception("a deadline callback failed")


class TimedSteps:
    """One request's timed steps (write its due time, remind, give up), run in
    time order with one clock entry at a time: a request answered before its
    first step costs one entry and one cancel, however many steps it has."""

    __slots__ = ("_clock", "_steps", "_timer")

    def __init__(
        self, clock: DeadlineHeap | LoopTimers, steps: list[tuple[float, Callable[[], None]]]
    ) -> None:
        self._clock = clock
        # Latest first: the next step is popped off the end.
        self._steps = sorted(steps, key=lambda step: step[0], reverse=True)
        self._timer: Timer | asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        self._timer = self._clock.at(self._steps[-1][0], self._next) if self._steps else None

    def _next(self) -> None:
        _, step = self._steps.pop()
        step()
        if self._timer is not None:  # not cancelled by the step itself
            self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._steps.clear()


class LoopTimers:
    """The same ``at`` on the event loop's own timers: for a session built
    without the engine's heap (unit tests, tools)."""

    def at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.time()), callback)


async def _sleep_or_wake(wake: asyncio.Event, delay: float) -> None:
    try:
        async with asyncio.timeout(delay):
            await wake.wait()
    except TimeoutError:
        pass
