"""An attempt's output: each event (``OutputEvent``) and the ordered tail
that decides the attempt (``OutputTail``).

Its own module so that ``faces`` (the ``AttemptContext`` carries the tail)
and ``tasks`` (an attempt record holds one) both import it without importing
each other.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from operator_server.errors import AttemptFailed, Code
from operator_server.wire.times import iso
from operator_server.wire.values import WorkerResult


@dataclass(frozen=True)
class OutputEvent:
    kind: str  # "final" decides the attempt; "output" is recorded only
    source: str  # "worker" | "ack" | "halt" | "agent" | "senior"
    value: Any
    ok: bool
    at: float
    # Why a worker's ``ok=false`` result failed, when it said (``WorkerResult.error``).
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            "value": self.value,
            "ok": self.ok,
            "at": iso(self.at),
            "error": self.error,
        }

    def to_record(self) -> list[Any]:
        # The error rides as a sixth element only when there is one, so rows
        # written before it existed (five elements) read back unchanged.
        rec = [self.kind, self.source, self.value, self.ok, self.at]
        return rec if self.error is None else [*rec, self.error]

    @classmethod
    def from_record(cls, rec: list[Any]) -> OutputEvent:
        kind, source, value, ok, at, *rest = rec
        return cls(kind, source, value, bool(ok), float(at), rest[0] if rest else None)


class OutputTail:
    """Ordered output of one (task, attempt).  The last ``final`` decides.

    A worker's HTTP post is authoritative: once one exists, an operator's
    ``spawn_ack`` value is recorded as plain output and does not decide.
    ``listener``, when set, is told of each new output (the task's event stream);
    ``keep``, when set, stores each new output on its own (``Store.put_output_soon``).
    A worker's result is stored by its poster instead, who waits for the commit
    (``append_pending``); the decision waits for every such write (``settle``).
    """

    def __init__(self) -> None:
        self.events: list[OutputEvent] = []
        self.listener: Callable[[OutputEvent], None] | None = None
        self.keep: Callable[[OutputEvent], asyncio.Future[None]] | None = None
        # Outputs ``keep`` queued, with their commits, until the end checks them.
        self._keeping: list[tuple[OutputEvent, asyncio.Future[None]]] = []
        # Set once the tail is deciding the attempt: a worker's result after
        # that could only be accepted and ignored, so it is refused instead.
        self.decided = False
        # Worker results appended whose rows are still being written.
        self._writing: dict[asyncio.Future[None], OutputEvent] = {}

    def _append(self, event: OutputEvent) -> None:
        self.events.append(event)
        if self.keep is not None:
            done = self.keep(event)
            done.add_done_callback(_seen)  # its failure is handled by ``unkept``
            self._keeping.append((event, done))
        if self.listener is not None:
            self.listener(event)

    def append_final(self, result: WorkerResult, source: str) -> None:
        self._append(
            OutputEvent("final", source, result.value, result.ok, time.time(), result.error)
        )

    def append_pending(self, result: WorkerResult) -> tuple[OutputEvent, asyncio.Future[None]]:
        """A worker's result, in the tail at once (in order, seen by the
        decision) but neither stored nor announced: its poster stores it and
        then calls ``written``; ``settle`` waits for that."""
        event = OutputEvent("final", "worker", result.value, result.ok, time.time(), result.error)
        self.events.append(event)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._writing[done] = event
        return event, done

    def written(self, done: asyncio.Future[None], stored: bool) -> None:
        """A pending result's row is committed (announced now), or it is not
        (taken back out: the worker is told it was not accepted)."""
        event = self._writing.pop(done)
        if stored:
            if self.listener is not None:
                self.listener(event)
        else:
            self.events = [e for e in self.events if e is not event]
        done.set_result(None)

    async def settle(self) -> None:
        """Refuse any further worker result and wait until every one already
        appended is stored or taken back: the decision that follows counts
        exactly the results whose posters are told 200."""
        self.decided = True
        if self._writing:
            await asyncio.gather(*self._writing)

    def unkept(self) -> list[OutputEvent]:
        """The outputs ``keep`` queued whose rows failed to commit (the store
        failed meanwhile): the attempt's end writes them again before it
        tries again (``kept`` once one lands), so an end on disk has its
        outputs too.  Nothing waits here: an output still being written was
        queued before the end, so it commits before it, or fails with it."""
        self._keeping = [(e, d) for e, d in self._keeping if not d.done() or _failed(d)]
        return [e for e, d in self._keeping if d.done()]

    def kept(self, event: OutputEvent) -> None:
        """``event``'s row, written again, is committed now."""
        self._keeping = [(e, done) for e, done in self._keeping if e is not event]

    def worker_posted(self) -> bool:
        """A worker's result was accepted into this attempt."""
        return any(e.kind == "final" and e.source == "worker" for e in self.events)

    def offer_ack(self, result: WorkerResult) -> None:
        if result.halted:
            self.append_final(result, "halt")
        elif self.worker_posted():
            self._append(OutputEvent("output", "ack", result.value, result.ok, time.time()))
        else:
            self.append_final(result, "ack")

    def decide(self) -> WorkerResult:
        self.decided = True
        for event in reversed(self.events):
            if event.kind == "final":
                return WorkerResult(
                    event.value, event.ok, halted=event.source == "halt", error=event.error
                )
        raise AttemptFailed(Code.NO_FINAL_RESULT, "no final result")


def _failed(done: asyncio.Future[None]) -> bool:
    return done.cancelled() or done.exception() is not None


def _seen(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()
