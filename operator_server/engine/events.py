"""Task events: what they hold, and the live fan-out to subscribers.

The engine builds each event (``EventLog.make``) and hands it to the store with
the write that commits the change it describes; the store hands committed
events to ``publish`` (``Store.observe_events``), so a subscriber sees only
what a restart would also show, in id order.  Streams (``http/events.py``)
read what they missed from the store, then follow ``subscribe``.

``EventFanout`` is the small interface a multi-node fan-out (Postgres
LISTEN/NOTIFY) would implement; ``LocalFanout`` serves one process.

**Many followers of every event cost about one.**  A stream of one task, or
one with a filter, gets its own queue of the events it wants.  The streams
that want every event (``GET /v1/events`` with no filter: the console's task
list, dashboards) share one feed instead: each event is encoded as SSE once,
appended once, and each stream keeps only its position in it.  A publish then
costs one wake-up per waiting stream, not one queue append and one encoding per
event per stream (``make bench ARGS=fanout``).

What an event holds, and never holds, is its wire form (``wire/events.py``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from operator_server.engine.tasks import Task, TaskStatus
from operator_server.store import Events, TaskEvent
from operator_server.wire.events import EventType

__all__ = [
    "EventFanout",
    "EventLog",
    "EventType",
    "FeedSubscription",
    "LocalFanout",
    "Subscription",
    "is_terminal",
    "sse",
]

# An event as a stream sends it: its id and its SSE block.
Encoded = tuple[int, bytes]
# Feed entries kept past the slowest reader's position before they are dropped.
_FEED_TRIM = 4096


def sse(event: TaskEvent) -> bytes:
    """The event's Server-Sent Events block."""
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.text}\n\n".encode()


class EventLog:
    """Builds events.  Their ids come from the store, which numbers each as it
    queues the write it rides with (one sequence for all tasks, continued
    from what is stored), so ids increase in commit order; the newest
    published id is ``Engine.published_event_id``."""

    def make(
        self, task: Task, type: str, at: float, *values: Any, status: TaskStatus | None = None
    ) -> TaskEvent:
        """An event of ``task``: ``values`` are its type's fields in the order
        ``FIELDS`` names them; ``status`` is the task's status once the event
        applies (default: as it is now).  Nothing is formatted or encoded here
        (``TaskEvent`` does that when a stream reads it)."""
        return TaskEvent(
            0, task.id, type, at, task.agent, _STATUS_TEXT[status or task.status], values
        )


# A status's text without the enum's ``value`` descriptor (one per event).
_STATUS_TEXT: dict[TaskStatus, str] = {status: status.value for status in TaskStatus}
_TERMINAL_TEXT = frozenset(status.value for status in TaskStatus if status.terminal)


def is_terminal(event: TaskEvent) -> bool:
    """The event that ends its task's stream: the task's final status."""
    return event.type == EventType.STATUS and event.status in _TERMINAL_TEXT


class Subscription:
    """One stream's live feed: a bounded queue that the fan-out fills.

    ``queue_max`` events waiting means the reader is not keeping up: the
    subscription closes itself with ``overflowed`` set (the stream then cuts the
    reader off, as the socket pump does a slow operator); memory stays bounded.
    """

    def __init__(
        self,
        queue_max: int,
        wants: Callable[[TaskEvent], bool] | None,
        on_close: Callable[[], None],
    ) -> None:
        self._events: deque[TaskEvent] = deque()
        self._ready = asyncio.Event()
        self._cap = queue_max
        self._wants = wants
        self._on_close = on_close
        self.closed = False
        self.overflowed = False

    def offer(self, event: TaskEvent) -> None:
        if self.closed or (self._wants is not None and not self._wants(event)):
            return
        if len(self._events) >= self._cap:
            self.overflowed = True
            self.close()
            return
        self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()
            self._on_close()

    def take(self) -> list[TaskEvent]:
        """Everything queued now."""
        out = list(self._events)
        self._events.clear()
        self._ready.clear()
        return out

    async def wait(self, timeout: float) -> bool:
        """Wait until something is queued or the subscription closed; False on timeout."""
        if self._events or self.closed:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        return True


class FeedSubscription:
    """A stream that wants every event: a position in the fan-out's shared feed.

    Bounded like ``Subscription``: more than ``queue_max`` events published past
    the position and not taken closes it with ``overflowed`` set (checked when
    the feed is trimmed, and whenever the reader looks).  Only a reader that is
    waiting is woken by a publish: one busy writing, or gathering its next
    write, costs a publish nothing.
    """

    def __init__(self, fanout: LocalFanout, queue_max: int) -> None:
        self._fanout = fanout
        self.cap = queue_max
        self._ready = asyncio.Event()
        self.pos = fanout.feed_end  # absolute index of the next entry to take
        self.closed = False
        self.overflowed = False

    def overflow(self) -> None:
        self.overflowed = True
        self.close()

    def wake(self) -> None:
        self._ready.set()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._ready.set()
            self._fanout.forget(self)

    def take(self) -> list[Encoded]:
        """Everything published since the last take."""
        out = self._fanout.feed_since(self.pos)
        self.pos += len(out)
        self._ready.clear()
        return out

    async def wait(self, timeout: float) -> bool:
        """Wait until something is published or the subscription closed; False on timeout."""
        end = self._fanout.feed_end
        if end - self.pos > self.cap:
            self.overflow()
        if self.closed or self.pos < end:
            return True
        self._ready.clear()
        self._fanout.waiting.add(self)
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            return False
        finally:
            self._fanout.waiting.discard(self)
        return True


class EventFanout(Protocol):
    def publish(self, events: Events) -> None: ...

    @property
    def last_id(self) -> int:
        """The id of the newest event published (0: none yet).  Everything up to
        it is committed, so a reader that takes it *before* reading state and
        then follows with ``Last-Event-ID: <it>`` misses no change."""
        ...

    def subscribe(
        self,
        task_id: str | None,
        queue_max: int,
        wants: Callable[[TaskEvent], bool] | None = None,
    ) -> Subscription | FeedSubscription:
        """Every event of every task (``task_id`` and ``wants`` None) comes as a
        ``FeedSubscription`` (encoded once for all), the rest as a ``Subscription``."""
        ...

    def close(self) -> None:
        """Close every subscription (shutdown): streams end cleanly."""
        ...

    @property
    def subscribers(self) -> int:
        """How many streams are following (tests, metrics)."""
        ...


class LocalFanout:
    """Fan-out within one process.  Publishing costs nothing with no subscriber."""

    def __init__(self) -> None:
        self._by_task: dict[str, set[Subscription]] = {}
        self._all: set[Subscription] = set()
        self._last_id = 0
        # The shared feed of the streams that want everything: entries from
        # absolute index ``_feed_base`` on.
        self._feed: list[Encoded] = []
        self._feed_base = 0
        self._readers: set[FeedSubscription] = set()
        self.waiting: set[FeedSubscription] = set()  # readers blocked in ``wait``

    @property
    def last_id(self) -> int:
        return self._last_id

    @property
    def feed_end(self) -> int:
        return self._feed_base + len(self._feed)

    def feed_since(self, pos: int) -> list[Encoded]:
        return self._feed[pos - self._feed_base :]

    def publish(self, events: Events) -> None:
        if events and events[-1].id > self._last_id:  # they come in id order
            self._last_id = events[-1].id
        if not events:
            return
        if self._readers:
            self._feed.extend((event.id, sse(event)) for event in events)
            if self.waiting:
                for reader in self.waiting:
                    reader.wake()
                self.waiting.clear()
            if len(self._feed) > _FEED_TRIM:
                self._trim()
        if not self._by_task and not self._all:
            return
        for event in events:
            for sub in list(self._by_task.get(event.task_id, ())):
                sub.offer(event)
            for sub in list(self._all):
                sub.offer(event)

    def _trim(self) -> None:
        """Cut off the readers too far behind, and drop what every other reader took."""
        end = self.feed_end
        for reader in [r for r in self._readers if end - r.pos > r.cap]:
            reader.overflow()
        keep_from = min((r.pos for r in self._readers), default=end)
        if keep_from > self._feed_base:
            del self._feed[: keep_from - self._feed_base]
            self._feed_base = keep_from

    def forget(self, reader: FeedSubscription) -> None:
        self._readers.discard(reader)
        self.waiting.discard(reader)
        if not self._readers:
            self._feed_base = self.feed_end
            self._feed.clear()

    def subscribe(
        self,
        task_id: str | None,
        queue_max: int,
        wants: Callable[[TaskEvent], bool] | None = None,
    ) -> Subscription | FeedSubscription:
        if task_id is None and wants is None:
            reader = FeedSubscription(self, queue_max)
            self._readers.add(reader)
            return reader
        group = self._all if task_id is None else self._by_task.setdefault(task_id, set())

        def forget() -> None:
            group.discard(sub)
            if task_id is not None and not group:
                self._by_task.pop(task_id, None)

        sub = Subscription(queue_max, wants, forget)
        group.add(sub)
        return sub

    def close(self) -> None:
        for reader in list(self._readers):
            reader.close()
        for sub in [*self._all, *(s for g in self._by_task.values() for s in g)]:
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._readers) + len(self._all) + sum(len(g) for g in self._by_task.values())
