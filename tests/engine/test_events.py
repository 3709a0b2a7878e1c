"""How the engine builds task events (their wire form is tested in tests/http)."""

from __future__ import annotations

import time

from operator_server.engine.events import (
    EventLog,
    EventType,
    FeedSubscription,
    LocalFanout,
    is_terminal,
    sse,
)
from operator_server.engine.tasks import Kind, Task, TaskStatus
from operator_server.wire.events import FIELDS
from operator_server.wire.times import iso


def task() -> Task:
    built = Task(
        agent="writer",
        directive="d",
        system=None,
        operator=None,
        layers=(),
        kind=Kind.AUTOMATE,
        max_attempts=1,
    )
    built.start_attempt()
    return built


def test_an_event_holds_the_common_fields_then_its_types_own_in_order() -> None:
    log = EventLog()
    now = time.time()
    event = log.make(task(), EventType.REQUEST, now, 1, "r-1", "spawn_hook", "s-1")
    assert list(event.data.items()) == [
        ("task_id", event.task_id),
        ("type", "request"),
        ("at", iso(now)),
        ("agent", "writer"),
        ("status", "running"),
        ("attempt", 1),
        ("req_id", "r-1"),
        ("face", "spawn_hook"),
        ("sid", "s-1"),
    ]
    # A reply also says where it came from (socket, rest, batch), appended last.
    assert list(FIELDS[EventType.REPLY]) == ["attempt", "req_id", "face", "sid", "via"]
    assert event.text == (
        f'{{"task_id":"{event.task_id}","type":"request","at":"{iso(now)}","agent":"writer",'
        '"status":"running","attempt":1,"req_id":"r-1","face":"spawn_hook","sid":"s-1"}'
    )


def test_a_final_status_event_carries_its_status_and_ends_the_stream() -> None:
    log = EventLog()
    running = task()
    ended = log.make(running, EventType.STATUS, 1.0, "cancelled", status=TaskStatus.CANCELLED)
    assert (ended.data["status"], ended.data["error_code"]) == ("cancelled", "cancelled")
    assert is_terminal(ended)
    assert not is_terminal(log.make(running, EventType.STATUS, 1.0))
    assert not is_terminal(log.make(running, EventType.ATTEMPT_ENDED, 1.0, 1, "passed"))


async def test_streams_that_want_every_event_share_one_feed_that_is_trimmed_and_bounded() -> None:
    """Each event is encoded once for every such stream; the feed keeps only what
    some reader has not taken, and a reader that takes nothing is cut off at
    its bound like any other subscription."""
    fanout = LocalFanout()
    quick = fanout.subscribe(None, 10_000)
    slow = fanout.subscribe(None, 100)
    assert isinstance(quick, FeedSubscription) and isinstance(slow, FeedSubscription)
    base = task()
    events = []
    for i in range(1, 5001):
        event = EventLog().make(base, EventType.OUTPUT, time.time(), 1, "output", "worker", True)
        event.id = i
        events.append(event)
    fanout.publish(events[:50])
    taken = quick.take()
    assert [entry_id for entry_id, _ in taken] == list(range(1, 51))
    assert taken[0][1] is slow.take()[0][1]  # the same bytes: encoded once
    assert taken[0][1] == sse(events[0])
    for i in range(50, 5000, 50):
        fanout.publish(events[i : i + 50])
        assert [entry_id for entry_id, _ in quick.take()] == list(range(i + 1, i + 51))
    assert slow.overflowed and slow.closed  # never took past its first 50
    assert fanout.subscribers == 1
    assert len(fanout.feed_since(fanout.feed_end - 1)) == 1
    assert len(fanout._feed) <= 4096 + 50  # trimmed as it went, not 5,000 entries
    quick.close()
    assert fanout.subscribers == 0 and fanout._feed == []
