"""Task events: what they hold, and the live fan-out to subscribers.

The engine builds each event (``EventLog.make``) and hands it to the store with
the write that commits the change it describes; the store hands committed
events to ``publish`` (``Store.observe_events``), so a subscriber sees only
what a restart would also show, in id order.  Streams (``http/events.py``)
read what they missed from the store, then follow ``subscribe``.

``EventFanout`` is the small interface a multi-node fan-out (Postgres
LISTEN/NOTIFY) would implement; ``LocalFanout`` serves one process.

What an event never holds: an output's value (a worker may post anything,
credentials included), a question, an answer, a capability or worker handle.
Only kinds, sources, ids, statuses and error codes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from operator_server.engine.tasks import Task, TaskStatus, iso
from operator_server.store import Events, TaskEvent


class EventType:
    CREATED = "created"
    STATUS = "status"
    ATTEMPT_STARTED = "attempt_started"
    ATTEMPT_ENDED = "attempt_ended"
    OUTPUT = "output"
    REQUEST = "request"
    REPLY = "reply"


class EventLog:
    """Builds events.  Their ids come from the store, which numbers each as it
    queues the write it rides with (one sequence for all tasks, continued
    from what is stored), so ids increase in commit order; ``last_id`` is what
    the store had at start-up."""

    def __init__(self) -> None:
        self.last_id = 0

    def resume_after(self, last_id: int) -> None:
        self.last_id = max(self.last_id, last_id)

    def make(
        self,
        task: Task,
        type: str,
        at: float,
        status: TaskStatus | None = None,
        **extra: Any,
    ) -> TaskEvent:
        """An event of ``task``; ``status`` is the task's status once the event
        applies (default: as it is now).  Not encoded here: the store encodes a
        write's events together on its own thread, a stream only when one reads."""
        data = {
            "task_id": task.id,
            "type": type,
            "at": iso(at),
            "agent": task.agent,
            "status": _STATUS_TEXT[status or task.status],
        }
        if extra:
            data.update(extra)
        return TaskEvent(0, task.id, type, data)

    def make_operator(
        self, task: Task, type: str, at: float, req_id: str, face: str, sid: str
    ) -> TaskEvent:
        """``make(task, type, at, attempt=..., req_id=..., face=..., sid=...)``
        spelled out: a task has several of these (``request``, ``reply``), and
        the keyword dict and its merge were most of their cost."""
        task_id = task.id
        data = {
            "task_id": task_id,
            "type": type,
            "at": iso(at),
            "agent": task.agent,
            "status": _STATUS_TEXT[task.status],
            "attempt": task.attempt,
            "req_id": req_id,
            "face": face,
            "sid": sid,
        }
        return TaskEvent(0, task_id, type, data)


# A status's text without the enum's ``value`` descriptor (one per event).
_STATUS_TEXT: dict[TaskStatus, str] = {status: status.value for status in TaskStatus}


def is_terminal(event: TaskEvent) -> bool:
    """The event that ends its task's stream: the task's final status."""
    return event.type == EventType.STATUS and TaskStatus(event.data["status"]).terminal


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
    ) -> Subscription: ...

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

    @property
    def last_id(self) -> int:
        return self._last_id

    def publish(self, events: Events) -> None:
        if events:
            self._last_id = max(self._last_id, events[-1].id)
        if not self._by_task and not self._all:
            return
        for event in events:
            for sub in list(self._by_task.get(event.task_id, ())):
                sub.offer(event)
            for sub in list(self._all):
                sub.offer(event)

    def subscribe(
        self,
        task_id: str | None,
        queue_max: int,
        wants: Callable[[TaskEvent], bool] | None = None,
    ) -> Subscription:
        group = self._all if task_id is None else self._by_task.setdefault(task_id, set())

        def forget() -> None:
            group.discard(sub)
            if task_id is not None and not group:
                self._by_task.pop(task_id, None)

        sub = Subscription(queue_max, wants, forget)
        group.add(sub)
        return sub

    def close(self) -> None:
        for sub in [*self._all, *(s for g in self._by_task.values() for s in g)]:
            sub.close()

    @property
    def subscribers(self) -> int:
        return len(self._all) + sum(len(g) for g in self._by_task.values())
