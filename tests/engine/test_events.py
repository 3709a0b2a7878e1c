"""How the engine builds task events (their wire form is tested in tests/http)."""

from __future__ import annotations

import time

from operator_server.engine.events import EventLog, EventType, is_terminal
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
    assert list(FIELDS[EventType.REPLY]) == ["attempt", "req_id", "face", "sid"]
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
